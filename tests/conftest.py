"""Fixtures shared by test modules."""

from tests.test_twistd import start_twistd  # noqa: F401 (a fixture, found by name)
