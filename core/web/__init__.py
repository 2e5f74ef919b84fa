"""Shared HTTP plumbing for every specguard server and client: the app base (errors, body limit, auth),
metrics, the connection guard and the one outbound client factory. Imports nothing above it."""
