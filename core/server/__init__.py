"""The OpenAI-compatible HTTP server (`specguard serve`)."""
