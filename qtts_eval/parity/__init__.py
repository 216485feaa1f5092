"""Parity: stage dumps from official modules, comparison under tolerance profiles, reports."""
