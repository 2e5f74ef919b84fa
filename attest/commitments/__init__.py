"""Pedersen commitments and zero-knowledge proofs on BLS12-381 G1 (see docs/commitments.md)."""
