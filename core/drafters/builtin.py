"""Built-in drafters, registered as an ordinary plugin."""
