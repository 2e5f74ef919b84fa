"""Built-in integrity layers. Each is a package `plugins/<layer>/`, listed in
specguard.plugin_manager.DEFAULT_PLUGINS and registered exactly like a third-party plugin:
`__init__.py` holds the hook implementations only, `cli.py` its commands, `routes.py` its HTTP routes.
The implementation lives in specguard (core/) and specguard.attest; no plugin imports another."""
