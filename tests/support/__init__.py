"""Test support: tiny models, servers started on loopback, hostile drafters and providers.

Importable from every test as `support.*` (pytest's `pythonpath = ["tests"]`)."""
