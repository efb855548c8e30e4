"""Loopback fakes of vendor wire protocols for tests."""
