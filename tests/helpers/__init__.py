"""Helpers shared by the tests (imported by tests, never a test module itself)."""
