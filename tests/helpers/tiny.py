"""Tiny models and fixture writers shared by tests (no downloads, seconds on CPU)."""
