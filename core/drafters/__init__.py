"""Drafters: untrusted proposers of draft tokens. See specguard.drafters.base."""
