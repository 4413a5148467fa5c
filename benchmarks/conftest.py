"""Fixtures of benchmarks/: the shared ones of tests/conftest.py (pytest finds a fixture by its name here)."""

from tests.conftest import one_thread

__all__ = ["one_thread"]
