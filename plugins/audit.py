"""Built-in integrity layer: audit (registered like any third-party plugin)."""
