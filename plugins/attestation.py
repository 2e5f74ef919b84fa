"""Built-in integrity layer: attestation (registered like any third-party plugin)."""
