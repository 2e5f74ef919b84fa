"""Built-in integrity layer: receipts (registered like any third-party plugin)."""
