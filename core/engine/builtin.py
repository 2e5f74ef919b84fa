"""The built-in speculative engine, registered as an ordinary plugin."""
