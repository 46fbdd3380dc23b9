"""Fixtures for tests and smoke runs: tiny models and data sets built offline, deterministically."""
