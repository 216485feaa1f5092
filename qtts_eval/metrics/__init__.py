"""Measurements taken around or from a pipeline's output; definitions live in docs/metrics.md."""
