"""Helpers for the test suite and bench/ scripts: start `specguard` processes on loopback and stop them
by PID (`processes`), and build the response body a node sends for a transcript (`responses`).

Nothing under core/, plugins/, attest/ or policies/ imports this package
(tests/architecture/test_testing_helpers.py): it is never on a serving or verifying code path.
"""
