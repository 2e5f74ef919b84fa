"""Built-in integrity layers. Each module is an ordinary specguard plugin, listed in
specguard.plugin_manager.DEFAULT_PLUGINS and registered exactly like a third-party one."""
