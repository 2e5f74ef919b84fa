"""Built-in integrity layer: consensus (registered like any third-party plugin)."""
