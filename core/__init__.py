"""specguard: verifiable LLM inference.

A lossless speculative-decoding engine (the target model verifies every token an untrusted
drafter proposes) wrapped in integrity layers that are ordinary pluggy plugins: signed
receipts and a transparency log, TEE attestation, commitment proofs, consensus re-checking,
and substitution audits.
"""

__version__ = "0.1.0"
