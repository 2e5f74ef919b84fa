"""Selective disclosure of per-token records: RFC 9162 roots, inclusion proofs, strict parsing."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specguard.attest import disclosure as ds
from specguard.attest import merkle
from specguard.canonical import canonical_json
from specguard.errors import SpecguardError, UsageError
from specguard.transcript import SamplingParams, TokenRecord, Transcript


def make_transcript(n: int) -> Transcript:
    tokens = [TokenRecord(position=i, token_id=100 + 7 * i, logprob=-0.01 * i - 1e-7,
                          top=[(1, -0.5)], margin=0.25) for i in range(n)]
    return Transcript(model_name="tiny", model_digest="sha256:" + "11" * 32, tokenizer_digest="sha256:" + "22" * 32,
                      prompt_ids=[1], output_ids=[t.token_id for t in tokens], tokens=tokens, steps=[],
                      params=SamplingParams(max_tokens=max(n, 1)), finish_reason="length", drafter="none")


def test_leaf_is_canonical_subset_and_root_is_rfc9162() -> None:
    t = make_transcript(5)
    leaf = ds.token_record_leaf(t.tokens[2])
    assert leaf == canonical_json({"position": 2, "token_id": 114, "logprob": round(-0.02 - 1e-7, 6)})
    assert leaf == b'{"logprob":-0.02,"position":2,"token_id":114}'
    hashes = [hashlib.sha256(b"\x00" + ds.token_record_leaf(tok)).digest() for tok in t.tokens]
    # RFC 9162 MTH for 5 leaves: node(node(node(0,1), node(2,3)), 4)
    n = lambda a, b: hashlib.sha256(b"\x01" + a + b).digest()  # noqa: E731
    want = n(n(n(hashes[0], hashes[1]), n(hashes[2], hashes[3])), hashes[4])
    assert ds.token_records_root(t.tokens) == want.hex()
    assert ds.token_records_root([]) == hashlib.sha256(b"").hexdigest()
    # margin and top-k alternatives are not part of the leaf
    t.tokens[2].top = [(9, -9.0)]
    t.tokens[2].margin = 3.0
    assert ds.token_records_root(t.tokens) == want.hex()


@settings(max_examples=25, deadline=None, derandomize=True)
@given(n=st.integers(1, 40), data=st.data())
def test_disclose_and_verify_round_trip(n: int, data) -> None:
    t = make_transcript(n)
    positions = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n))
    doc = ds.disclose(t, positions)
    root = ds.token_records_root(t.tokens)
    assert doc["root"] == root and doc["tree_size"] == n
    records = ds.verify_disclosure(json.loads(json.dumps(doc)), root, n)
    assert [r["index"] for r in records] == sorted(set(positions))
    for r in records:
        full = t.tokens[r["index"]].to_json()
        assert {k: r[k] for k in ds.RECORD_FIELDS} == {k: full[k] for k in ds.RECORD_FIELDS}
        assert set(r) == {"index", *ds.RECORD_FIELDS}  # nothing else is revealed


def test_tampering_is_detected() -> None:
    t = make_transcript(9)
    root = ds.token_records_root(t.tokens)
    doc = ds.disclose(t, [3, 8])
    other_root = ds.token_records_root(make_transcript(10).tokens)
    with pytest.raises(ds.DisclosureError):
        ds.verify_disclosure(doc, other_root, 9)
    no_root = {k: v for k, v in doc.items() if k != "root"}
    with pytest.raises(ds.DisclosureError):
        ds.verify_disclosure(no_root, other_root, 9)
    ds.verify_disclosure(no_root, root, 9)
    mutations = []
    for key, value in (("token_id", 1), ("logprob", -0.5), ("position", 4)):
        d = copy.deepcopy(doc)
        d["records"][0]["record"][key] = value
        mutations.append(d)
    d = copy.deepcopy(doc)
    d["records"][0]["index"] = 2
    mutations.append(d)
    d = copy.deepcopy(doc)
    d["records"][0]["proof"][0] = "00" * 32
    mutations.append(d)
    d = copy.deepcopy(doc)
    d["records"][0]["proof"].append("00" * 32)
    mutations.append(d)
    d = copy.deepcopy(doc)
    d["records"][0]["proof"].pop()
    mutations.append(d)
    d = copy.deepcopy(doc)
    d["tree_size"] = 10
    mutations.append(d)
    d = copy.deepcopy(doc)
    d["records"][0]["index"] = 99
    mutations.append(d)
    for bad in mutations:
        with pytest.raises(ds.DisclosureError):
            ds.verify_disclosure(bad, root, 9)


def test_malformed_documents_are_parse_errors() -> None:
    t = make_transcript(4)
    root = ds.token_records_root(t.tokens)
    doc = ds.disclose(t, [1])
    item = doc["records"][0]
    bads = [None, [], "x", dict(doc, version=2), dict(doc, version=True), dict(doc, suite="x"),
            dict(doc, tree_size=-1), dict(doc, tree_size="4"), dict(doc, records=[]), dict(doc, records={}),
            dict(doc, records=[item, item]), dict(doc, records=[dict(item, extra=1)]),
            dict(doc, records=[dict(item, index=-1)]), dict(doc, records=[dict(item, index=True)]),
            dict(doc, records=[dict(item, record=dict(item["record"], top=[]))]),
            dict(doc, records=[dict(item, record=dict(item["record"], token_id="5"))]),
            dict(doc, records=[dict(item, record=dict(item["record"], logprob="x"))]),
            dict(doc, records=[dict(item, record=dict(item["record"], logprob=float("nan")))]),
            dict(doc, records=[dict(item, proof="00")]), dict(doc, records=[dict(item, proof=["00" * 31])]),
            dict(doc, records=[dict(item, proof=["ZZ" * 32])]), dict(doc, records=[dict(item, proof=[5])])]
    for bad in bads:
        with pytest.raises(ds.DisclosureParseError):
            ds.verify_disclosure(bad, root, 4)
    for bad_root in ("00", root.upper(), None, 5):
        with pytest.raises(ds.DisclosureParseError):
            ds.verify_disclosure(doc, bad_root, 4)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(doc=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                        lambda children: st.lists(children, max_size=3)
                        | st.dictionaries(st.sampled_from(["version", "suite", "tree_size", "root", "records",
                                                           "index", "record", "proof", "position",
                                                           "token_id", "logprob"]), children, max_size=5),
                        max_leaves=12))
def test_fuzzed_documents_raise_only_typed_errors(doc) -> None:
    try:
        ds.verify_disclosure(doc, "ab" * 32, 4)
    except SpecguardError:
        return
    raise AssertionError("a random document verified")


def test_disclose_rejects_unknown_positions() -> None:
    with pytest.raises(UsageError):
        ds.disclose(make_transcript(3), [3])


def test_uses_the_shared_merkle_module() -> None:
    t = make_transcript(6)
    hashes = [merkle.leaf_hash(ds.token_record_leaf(tok)) for tok in t.tokens]
    assert ds.token_records_root(t.tokens) == merkle.root_hash(hashes).hex()
