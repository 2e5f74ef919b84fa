"""Pedersen commitments, opening and equality proofs: completeness, soundness, malformed input."""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from specguard.attest.commitments import encoding as enc
from specguard.attest.commitments import group as g
from specguard.attest.commitments import pedersen as ped
from specguard.attest.commitments import proofs as pf
from specguard.errors import SpecguardError, UsageError, VerificationError

R = g.R
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
messages = st.integers(min_value=0, max_value=R - 1)
blindings = st.integers(min_value=1, max_value=R - 1)
contexts = st.binary(max_size=64)
CTX = b"sha256:" + b"ab" * 32


@SETTINGS
@given(m=messages, r=blindings, ctx=contexts)
def test_opening_proof_completeness(m: int, r: int, ctx: bytes) -> None:
    c = ped.commit(m, r)
    ped.verify_opening(c, m, r)
    proof = pf.prove_opening(c, m, r, ctx)
    pf.verify_opening_proof(c, proof, ctx)
    doc = enc.opening_proof_to_json(proof)
    pf.verify_opening_proof(c, enc.opening_proof_from_json(doc), ctx)


@SETTINGS
@given(m=messages, r1=blindings, r2=blindings, ctx=contexts)
def test_equality_proof_completeness(m: int, r1: int, r2: int, ctx: bytes) -> None:
    assume(r1 != r2)  # C1 == C2 is refused (tests/security/test_commitment_binding.py)
    c1, c2 = ped.commit(m, r1), ped.commit(m, r2)
    proof = pf.prove_equality(c1, r1, c2, r2, ctx)
    pf.verify_equality(c1, c2, proof, ctx)
    pf.verify_equality(c1, c2, enc.equality_proof_from_json(enc.equality_proof_to_json(proof)), ctx)


def test_commitment_is_hiding_and_binding_shape() -> None:
    m = 42
    c1, r1 = ped.fresh_commitment(m)
    c2, r2 = ped.fresh_commitment(m)
    assert c1 != c2 and r1 != r2  # fresh blinding: unlinkable commitments to the same m
    assert ped.commit(m, r1) == c1
    assert ped.commit_with_mg(g.generator_g().mul(m), r1) == c1
    with pytest.raises(ped.OpeningError):
        ped.verify_opening(c1, m + 1, r1)
    with pytest.raises(ped.OpeningError):
        ped.verify_opening(c1, m, r2)
    for bad_m, bad_r in ((R, 1), (-1, 1), (1, R), (1, -1), (1, 0)):
        with pytest.raises(g.ScalarError):
            ped.commit(bad_m, bad_r)
    with pytest.raises(g.ScalarError):
        ped.verify_opening(c1, m, R + r1)  # unreduced scalars are rejected, not reduced
    with pytest.raises(g.ScalarError):
        ped.commit_with_mg(g.generator_g().mul(m), 0)


@pytest.fixture(scope="module")
def opening_case():
    m, r = 123456789, 987654321
    c = ped.commit(m, r)
    return c, m, r, pf.prove_opening(c, m, r, CTX)


@pytest.fixture(scope="module")
def equality_case():
    m = 777
    c1, r1 = ped.fresh_commitment(m)
    c2, r2 = ped.fresh_commitment(m)
    return c1, c2, r1, r2, pf.prove_equality(c1, r1, c2, r2, CTX)


def test_opening_proof_soundness(opening_case) -> None:
    c, m, r, proof = opening_case
    G, H = g.generator_g(), g.generator_h()
    mutated = [
        pf.OpeningProof(proof.t + G, proof.s_m, proof.s_r),
        pf.OpeningProof(proof.t + H, proof.s_m, proof.s_r),
        pf.OpeningProof(proof.t, (proof.s_m + 1) % R, proof.s_r),
        pf.OpeningProof(proof.t, proof.s_m, (proof.s_r + 1) % R),
        pf.OpeningProof(proof.t, proof.s_r, proof.s_m),
    ]
    for bad in mutated:
        with pytest.raises(pf.ProofError):
            pf.verify_opening_proof(c, bad, CTX)
    for other_c in (c + G, c + H, ped.commit(m + 1, r), G):
        with pytest.raises(pf.ProofError):
            pf.verify_opening_proof(other_c, proof, CTX)
    for other_ctx in (b"", CTX + b"x", CTX[:-1], b"sha256:" + b"ac" * 32):
        with pytest.raises(pf.ProofError):
            pf.verify_opening_proof(c, proof, other_ctx)
    pf.verify_opening_proof(c, proof, CTX.decode())  # str context is its UTF-8 bytes


def test_equality_proof_soundness(equality_case) -> None:
    c1, c2, r1, r2, proof = equality_case
    G, H = g.generator_g(), g.generator_h()
    for bad in (pf.EqualityProof(proof.t + H, proof.s), pf.EqualityProof(proof.t + G, proof.s),
                pf.EqualityProof(proof.t, (proof.s + 1) % R), pf.EqualityProof(proof.t, (R - proof.s) % R),
                pf.EqualityProof(-proof.t, proof.s)):
        with pytest.raises(pf.ProofError):
            pf.verify_equality(c1, c2, bad, CTX)
    with pytest.raises(pf.ProofError):
        pf.verify_equality(c2, c1, proof, CTX)  # statement order is bound
    for other in (c1 + G, c1 + H, ped.commit(778, r1)):
        with pytest.raises(pf.ProofError):
            pf.verify_equality(other, c2, proof, CTX)
        with pytest.raises(pf.ProofError):
            pf.verify_equality(c1, other, proof, CTX)
    with pytest.raises(pf.ProofError):
        pf.verify_equality(c1, c2, proof, b"another response")


def test_proofs_do_not_cross_protocols(opening_case, equality_case) -> None:
    c, _m, _r, opening = opening_case
    c1, c2, *_rest, equality = equality_case
    # an equality proof's (T, s) is not an opening proof, nor the other way round
    with pytest.raises(pf.ProofError):
        pf.verify_opening_proof(c1 - c2, pf.OpeningProof(equality.t, 0, equality.s), CTX)
    with pytest.raises(pf.ProofError):
        pf.verify_equality(c, c - g.generator_g().mul(_m), pf.EqualityProof(opening.t, opening.s_r), CTX)
    with pytest.raises(enc.ProofFormatError):
        enc.equality_proof_from_json(enc.opening_proof_to_json(opening))
    with pytest.raises(enc.ProofFormatError):
        enc.opening_proof_from_json(enc.equality_proof_to_json(equality))


def test_unequal_values_cannot_be_proven() -> None:
    c1, r1 = ped.fresh_commitment(1)
    c2, r2 = ped.fresh_commitment(2)
    with pytest.raises(UsageError):
        pf.prove_equality(c1, r1, c2, r2, CTX)
    with pytest.raises(UsageError):
        pf.prove_opening(c1, 2, r1, CTX)
    # a "proof" built as if they were equal does not verify
    k = 5
    t = g.generator_h().mul(k)
    tr = pf.ProofTranscript(pf.PROTO_EQUALITY)
    tr.append_point("G", g.generator_g()).append_point("H", g.generator_h())
    tr.append_point("C1", c1).append_point("C2", c2).append_point("T", t).append("context", CTX)
    forged = pf.EqualityProof(t, (k + tr.challenge() * (r1 - r2)) % R)
    with pytest.raises(pf.ProofError):
        pf.verify_equality(c1, c2, forged, CTX)


def test_honest_transcript_reproduces_challenge(equality_case) -> None:
    c1, c2, r1, r2, proof = equality_case
    tr = pf.ProofTranscript(pf.PROTO_EQUALITY)
    tr.append_point("G", g.generator_g()).append_point("H", g.generator_h())
    tr.append_point("C1", c1).append_point("C2", c2).append_point("T", proof.t).append("context", CTX)
    c = tr.challenge()
    assert g.generator_h().mul(proof.s) == proof.t + (c1 - c2).mul(c)
    assert 0 <= c < R


def _valid_other_point() -> str:
    return g.generator_g().mul(99).hex()


def _mutations(value):
    """Every way we corrupt one JSON field: other valid values, bad types, bad encodings."""
    out = [None, 0, True, [], {}, ""]
    if isinstance(value, str) and len(value) in (64, 96):
        flip = value[:-1] + ("0" if value[-1] != "0" else "1")
        out += [flip, value.upper(), value[:-2], value + "00", "zz" + value[2:]]
        if len(value) == 96:
            out += [_valid_other_point(), "c0" + "00" * 47, (bytes([0x80]) + (4).to_bytes(47, "big")).hex(),
                    (bytes([0x80]) + (1).to_bytes(47, "big")).hex()]
        else:
            out += [R.to_bytes(32, "big").hex(), (R - 1).to_bytes(32, "big").hex(), "00" * 32, "ff" * 32]
    elif isinstance(value, int):
        out += [value + 1, -1, str(value)]
    else:
        out += [str(value) + "x", 1]
    return out


def _check_rejects(doc, parse, verify) -> int:
    count = 0
    for key in list(doc):
        for bad in _mutations(doc[key]):
            mutated = copy.deepcopy(doc)
            mutated[key] = bad
            with pytest.raises(SpecguardError) as info:
                verify(parse(mutated))
            assert isinstance(info.value, g.CommitmentParseError | VerificationError), info.value
            count += 1
        missing = {k: v for k, v in doc.items() if k != key}
        with pytest.raises(enc.ProofFormatError):
            parse(missing)
    extra = dict(doc, extra=1)
    with pytest.raises(enc.ProofFormatError):
        parse(extra)
    for not_obj in (None, [], "x", 1):
        with pytest.raises(enc.ProofFormatError):
            parse(not_obj)
    return count


def test_every_opening_proof_field_mutation_fails(opening_case) -> None:
    c, _m, _r, proof = opening_case
    doc = enc.opening_proof_to_json(proof)
    n = _check_rejects(doc, enc.opening_proof_from_json, lambda p: pf.verify_opening_proof(c, p, CTX))
    assert n > 40


def test_every_equality_proof_field_mutation_fails(equality_case) -> None:
    c1, c2, _r1, _r2, proof = equality_case
    doc = enc.equality_proof_to_json(proof)
    n = _check_rejects(doc, enc.equality_proof_from_json, lambda p: pf.verify_equality(c1, c2, p, CTX))
    assert n > 30


def test_identity_points_are_refused(equality_case) -> None:
    c1, c2, _r1, _r2, proof = equality_case
    ident = g.identity()
    with pytest.raises(g.IdentityPointError):
        pf.verify_equality(c1, c2, pf.EqualityProof(ident, proof.s), CTX)
    with pytest.raises(g.IdentityPointError):
        pf.verify_equality(ident, c2, proof, CTX)
    with pytest.raises(g.IdentityPointError):
        pf.verify_opening_proof(ident, pf.OpeningProof(proof.t, 1, 1), CTX)
    with pytest.raises(g.ScalarError):
        pf.verify_equality(c1, c2, pf.EqualityProof(proof.t, R + proof.s), CTX)
    with pytest.raises(g.ScalarError):
        pf.verify_equality(c1, c2, pf.EqualityProof(proof.t, -1), CTX)
    with pytest.raises(UsageError):
        pf.verify_equality(c1, c2, proof, 12345)  # type: ignore[arg-type]


def test_commitment_document_round_trip() -> None:
    c = ped.commit(5, 6)
    doc = enc.commitment_to_json(c)
    assert doc == {"version": pf.VERSION, "suite": pf.SUITE, "type": "pedersen-commitment", "commitment": c.hex()}
    assert enc.commitment_from_json(doc) == c
    for bad in (dict(doc, version=1), dict(doc, version=3), dict(doc, suite="other"), dict(doc, version=True),
                dict(doc, type="pedersen-equality")):
        with pytest.raises(enc.ProofFormatError):
            enc.commitment_from_json(bad)
