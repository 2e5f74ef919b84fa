"""The `remote` drafter: proposals from an untrusted drafting server (`specguard draft-serve`)."""
