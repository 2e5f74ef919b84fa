"""Known-answer vectors for the commitment suite, so the formats cannot drift silently.

tests/assets/commitments/kat.json was generated once by `build_kat()` below. Deterministic values
(G, H, model scalars, commitments, a Fiat–Shamir challenge) are recomputed and compared byte for
byte; the stored proofs (randomized when made) must still verify, which pins the proof JSON, the
transcript encoding and the challenge derivation.

To regenerate deliberately (a new suite or version, never to make a failing test pass):
    .venv/bin/python tests/attest/test_commit_kat.py --regenerate
and say why in the commit message. Regenerated for suite version 2 (Fiat–Shamir domain v2; the
response evidence's proof context binds the node key and the receipt id).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from py_ecc.bls.point_compression import compress_G1
from py_ecc.optimized_bls12_381 import G1, add, multiply

from specguard.attest.commitments import encoding as enc
from specguard.attest.commitments import group as g
from specguard.attest.commitments import model as md
from specguard.attest.commitments import pedersen as ped
from specguard.attest.commitments import proofs as pf

KAT_PATH = Path(__file__).resolve().parent / "assets" / "commitments" / "kat.json"
DIGEST = "sha256:" + "0123456789abcdef" * 4
BINDING = "sha256:" + "fedcba9876543210" * 4
NODE_KEY = bytes(range(32))
RECEIPT_ID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
FIXED_PAIRS = [(1, 1), (42, 7), (g.R - 1, g.R - 1), (2**200 + 12345, 2**128 + 99)]


def _scalar(k: int) -> str:
    return g.encode_scalar(k).hex()


def _challenge_case(c: g.G1Point) -> dict[str, Any]:
    tr = pf.ProofTranscript(pf.PROTO_OPENING)
    tr.append_point("G", g.generator_g()).append_point("H", g.generator_h()).append_point("C", c)
    tr.append("context", BINDING.encode())
    return {"protocol": pf.PROTO_OPENING, "labels": ["G", "H", "C", "context"], "commitment": c.hex(),
            "context": BINDING, "encoded_sha256": hashlib.sha256(tr.encoded()).hexdigest(),
            "challenge": _scalar(tr.challenge())}


def build_kat() -> dict[str, Any]:
    """Compute every vector (proofs with fresh randomness)."""
    h = g.generator_h()
    m = md.model_scalar(DIGEST)
    r_model = md.model_scalar("kat blinding")  # any fixed non-zero scalar
    c_model = ped.commit(m, r_model)
    c1, r1 = ped.fresh_commitment(m)
    opening = pf.prove_opening(c_model, m, r_model, BINDING)
    equality = pf.prove_equality(c1, r1, c_model, r_model, BINDING)
    secret = md.ModelCommitmentSecret(model_digest=DIGEST, blinding=r_model, commitment=c_model)
    x, y = h.affine()
    return {
        "about": "specguard commitment KAT; see tests/test_commit_kat.py for how it was made",
        "suite": pf.SUITE,
        "version": pf.VERSION,
        "G": g.generator_g().hex(),
        "H": {"dst": g.DST_H.decode(), "message": g.H_MESSAGE.decode(), "compressed": h.hex(),
              "x": f"{x:096x}", "y": f"{y:096x}"},
        "model_scalar": {"dst": md.DST_MODEL.decode(), "digest": DIGEST, "m": _scalar(m)},
        "commitments": [{"m": _scalar(a), "r": _scalar(b), "commitment": ped.commit(a, b).hex()}
                        for a, b in FIXED_PAIRS]
        + [{"m": _scalar(m), "r": _scalar(r_model), "commitment": c_model.hex(), "model_digest": DIGEST}],
        "challenge": _challenge_case(c_model),
        "opening_proof": {"commitment": c_model.hex(), "context": BINDING,
                          "proof": enc.opening_proof_to_json(opening)},
        "equality_proof": {"c1": c1.hex(), "c2": c_model.hex(), "context": BINDING,
                           "proof": enc.equality_proof_to_json(equality)},
        "evidence": {"binding_digest": BINDING, "node_public_key": NODE_KEY.hex(), "receipt_id": RECEIPT_ID,
                     "response_context_sha256": hashlib.sha256(pf.response_context(BINDING, NODE_KEY,
                                                                                   RECEIPT_ID)).hexdigest(),
                     "value": md.response_evidence(secret, BINDING, node_public_key=NODE_KEY, receipt_id=RECEIPT_ID)},
    }


def _kat() -> dict[str, Any]:
    return json.loads(KAT_PATH.read_text())


def test_generators_match_kat() -> None:
    kat = _kat()
    assert kat["suite"] == pf.SUITE and kat["version"] == pf.VERSION
    assert g.generator_g().hex() == kat["G"]
    h = g.generator_h()
    assert kat["H"]["dst"].encode() == g.DST_H and kat["H"]["message"].encode() == g.H_MESSAGE
    assert h.hex() == kat["H"]["compressed"]
    assert h.affine() == (int(kat["H"]["x"], 16), int(kat["H"]["y"], 16))
    assert g.decode_point_hex(kat["H"]["compressed"]) == h


def test_model_scalar_and_commitments_match_kat() -> None:
    kat = _kat()
    assert kat["model_scalar"]["dst"].encode() == md.DST_MODEL
    assert _scalar(md.model_scalar(kat["model_scalar"]["digest"])) == kat["model_scalar"]["m"]
    assert len(kat["commitments"]) == len(FIXED_PAIRS) + 1
    for case in kat["commitments"]:
        m, r = g.decode_scalar_hex(case["m"]), g.decode_scalar_hex(case["r"])
        assert ped.commit(m, r).hex() == case["commitment"]
        ped.verify_opening(g.decode_point_hex(case["commitment"]), m, r)
        # independently with py_ecc's own arithmetic and compression
        ref = add(multiply(G1, m), multiply(g.generator_h().to_py_ecc(), r))
        assert int(compress_G1(ref)).to_bytes(48, "big").hex() == case["commitment"]
    model_case = kat["commitments"][-1]
    opened = md.check_opening(model_case["commitment"], model_case["model_digest"], model_case["r"])
    assert opened["opens"] is True


def test_fiat_shamir_challenge_matches_kat() -> None:
    case = _kat()["challenge"]
    assert _challenge_case(g.decode_point_hex(case["commitment"])) == case


def test_stored_proofs_still_verify() -> None:
    kat = _kat()
    op = kat["opening_proof"]
    pf.verify_opening_proof(g.decode_point_hex(op["commitment"]), enc.opening_proof_from_json(op["proof"]),
                            op["context"])
    eq = kat["equality_proof"]
    pf.verify_equality(g.decode_point_hex(eq["c1"]), g.decode_point_hex(eq["c2"]),
                       enc.equality_proof_from_json(eq["proof"]), eq["context"])
    ev = kat["evidence"]
    key = bytes.fromhex(ev["node_public_key"])
    assert hashlib.sha256(pf.response_context(ev["binding_digest"], key, ev["receipt_id"])).hexdigest() \
        == ev["response_context_sha256"]
    summary = md.verify_response_evidence(ev["value"], ev["binding_digest"], kat["commitments"][-1]["commitment"],
                                          node_public_key=key, receipt_id=ev["receipt_id"])
    assert summary["pinned"] is True and summary["published"] == kat["commitments"][-1]["commitment"]


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: python tests/attest/test_commit_kat.py --regenerate  (deliberate format changes only)")
    KAT_PATH.parent.mkdir(parents=True, exist_ok=True)
    KAT_PATH.write_text(json.dumps(build_kat(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {KAT_PATH}")
