"""Evidence and its verification: TEE reports (parse / verify / validate), receipts and
canonical encoding, the Merkle transparency log, and commitment proofs. No model code here."""
