"""Built-in integrity layer: commitments (registered like any third-party plugin)."""
