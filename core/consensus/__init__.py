"""Consensus verification: independent verifier nodes re-derive a response and co-sign it.

- `rederive`: judge a transcript by re-scoring it with one teacher-forced forward pass.
- `vote`: signed votes (Ed25519 over canonical JSON with a domain tag).
- `quorum`: gather votes in parallel, build a quorum certificate, verify one offline.
- `service`: the verifier node's request handling (POST /specguard/v1/verify).
- `verifier_app`: a standalone verifier process (`python -m specguard.consensus.verifier_app`).
- `calibrate`: measure the near-tie margin and logprob tolerance on honest runs.

See docs/consensus.md.
"""
