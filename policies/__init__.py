"""Policies: what must hold for a response to be acceptable.

A policy is a TOML file. Each table a layer reads is parsed once, at load, into a frozen typed
object on `Policy`: `policy.attestation`, `policy.consensus`, `policy.drafter` (unknown keys are a
ConfigError naming the key); no code outside policies/ reads the raw tables. The policy's
identity in receipts is its name and the SHA-256 of its canonical JSON form.

Presets ship in `policies/presets/`: `dev` (INSECURE: allows simulated TEE evidence, and says
so every time it is used) and `strict`.
"""

from __future__ import annotations

from .model import Policy, evidence_policy, load_policy, preset_names

__all__ = ["Policy", "evidence_policy", "load_policy", "preset_names"]
