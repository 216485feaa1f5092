"""Test aids that are real programs: candidates that misbehave on purpose."""
