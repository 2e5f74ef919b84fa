"""Selective disclosure of a transcript's per-token records.

A receipt carries the RFC 9162 Merkle root over one leaf per output token. The leaf data is the
RFC 8785 canonical JSON of the record subset {"position", "token_id", "logprob"} taken from
`TokenRecord.to_json()` (logprob rounded to LOGPROB_DECIMALS). Leaf hash = SHA-256(0x00 ‖ data),
node hash = SHA-256(0x01 ‖ left ‖ right), empty tree = SHA-256("") (see attest/merkle.py).

A node can later reveal chosen positions together with inclusion proofs: the verifier learns
those records and that they sit at those indices under the signed root, and nothing else
(sibling hashes only; a single leaf hash of a low-entropy record could be guessed, see
docs/commitments.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..canonical import CanonicalizationError, canonical_json
from ..errors import ParseError, UsageError, VerificationError
from ..transcript import TokenRecord, Transcript
from .merkle import LogProofError, inclusion_proof, leaf_hash, root_hash, verify_inclusion

DISCLOSURE_VERSION = 1
DISCLOSURE_SUITE = "specguard-token-records-v1+rfc9162-sha256"
RECORD_FIELDS = ("position", "token_id", "logprob")


class DisclosureParseError(ParseError):
    """A disclosure document does not have the documented shape."""


class DisclosureError(VerificationError):
    """A disclosed record is not included under the expected token-records root."""


def token_record_leaf(token: TokenRecord) -> bytes:
    """The leaf data for one token: canonical JSON of {position, token_id, logprob}."""
    full = token.to_json()
    return canonical_json({k: full[k] for k in RECORD_FIELDS})


def _leaf_hashes(tokens: Sequence[TokenRecord]) -> list[bytes]:
    return [leaf_hash(token_record_leaf(t)) for t in tokens]


def token_records_root(tokens: list[TokenRecord]) -> str:
    """Hex RFC 9162 root over the per-token leaves, in transcript order (empty -> SHA-256(""))."""
    return root_hash(_leaf_hashes(tokens)).hex()


def disclose(transcript: Transcript, positions: Iterable[int]) -> dict[str, Any]:
    """A disclosure document revealing the records at `positions` (TokenRecord.position values)."""
    tokens = list(transcript.tokens)
    by_position: dict[int, int] = {}
    for index, token in enumerate(tokens):
        by_position.setdefault(token.position, index)
    wanted = sorted(set(positions))
    missing = [p for p in wanted if p not in by_position]
    if missing:
        raise UsageError("no token record at the requested position", field="positions",
                         got=missing, expected=f"positions present in the transcript ({len(tokens)} tokens)")
    hashes = _leaf_hashes(tokens)
    records = []
    for position in wanted:
        index = by_position[position]
        full = tokens[index].to_json()
        records.append({
            "index": index,
            "record": {k: full[k] for k in RECORD_FIELDS},
            "proof": [h.hex() for h in inclusion_proof(index, hashes)],
        })
    return {
        "version": DISCLOSURE_VERSION,
        "suite": DISCLOSURE_SUITE,
        "tree_size": len(tokens),
        "root": root_hash(hashes).hex(),
        "records": records,
    }


def verify_disclosure(doc: Any, root_hex: str, tree_size: int) -> list[dict[str, Any]]:
    """Check every disclosed record against the trusted root and tree size, both from a verified
    receipt (`predicate.token_records_root`, `predicate.token_records_count`).

    The tree size is never taken from the disclosure: an inclusion proof is only meaningful for a
    given size, and under a smaller claimed size a subtree hash can serve as a sibling so that a
    record appears at another index (e.g. the record at index 2 of 3 "proven" at index 1 of 2).
    Returns the verified records ({position, token_id, logprob} plus "index"), sorted by index.
    Raises DisclosureParseError for a malformed document and DisclosureError when a proof fails
    or the document names another tree size or root.
    """
    root = _hex_bytes(root_hex, "root_hex", 32)
    if not isinstance(tree_size, int) or isinstance(tree_size, bool) or tree_size < 0:
        raise UsageError("tree size must be a non-negative integer (the receipt's token_records_count)",
                         field="tree_size", got=tree_size)
    items = _check_header(doc, root_hex, tree_size)
    out: list[dict[str, Any]] = []
    seen: set[int] = set()
    for n, item in enumerate(items):
        index, record, proof = _parse_item(item, n)
        if index in seen:
            raise DisclosureParseError("index disclosed twice", field=f"records[{n}].index", got=index)
        seen.add(index)
        _check_included(n, index, record, proof, tree_size, root)
        out.append({"index": index, **record})
    out.sort(key=lambda r: r["index"])
    return out


def _check_header(doc: Any, root_hex: str, tree_size: int) -> list[Any]:
    """The document's version, suite, tree size and root against the receipt's; its records list."""
    if not isinstance(doc, dict):
        raise DisclosureParseError("disclosure must be a JSON object", field="disclosure",
                                   got=type(doc).__name__)
    if doc.get("version") != DISCLOSURE_VERSION or isinstance(doc.get("version"), bool):
        raise DisclosureParseError("unsupported disclosure version", field="version",
                                   got=doc.get("version"), expected=DISCLOSURE_VERSION)
    if doc.get("suite") != DISCLOSURE_SUITE:
        raise DisclosureParseError("unsupported disclosure suite", field="suite", got=doc.get("suite"),
                                   expected=DISCLOSURE_SUITE)
    claimed = doc.get("tree_size")
    if not isinstance(claimed, int) or isinstance(claimed, bool) or claimed < 0:
        raise DisclosureParseError("tree_size must be a non-negative integer", field="tree_size", got=claimed)
    if claimed != tree_size:
        raise DisclosureError("disclosure names another tree size than the receipt signs", field="tree_size",
                              got=claimed, expected=tree_size)
    if "root" in doc and doc["root"] != root_hex.lower():
        raise DisclosureError("disclosure is for another root", field="root", got=doc["root"],
                              expected=root_hex.lower())
    items = doc.get("records")
    if not isinstance(items, list) or not items:
        raise DisclosureParseError("records must be a non-empty list", field="records",
                                   got=type(items).__name__ if not isinstance(items, list) else 0)
    return items


def _check_included(n: int, index: int, record: dict[str, Any], proof: list[bytes], size: int, root: bytes) -> None:
    """Record `n` (at `index`) must be included under `root` in a tree of `size` leaves."""
    try:
        data = canonical_json(record)
    except CanonicalizationError as exc:
        raise DisclosureParseError("record is not canonical JSON", field=f"records[{n}].record",
                                   got=str(exc)) from exc
    try:
        verify_inclusion(index, size, leaf_hash(data), proof, root)
    except LogProofError as exc:
        raise DisclosureError(f"record {n} is not included under the root: {exc.message}",
                              field=f"records[{n}].{exc.field or 'proof'}", got=exc.got,
                              expected=exc.expected) from exc


def _parse_item(item: Any, n: int) -> tuple[int, dict[str, Any], list[bytes]]:
    where = f"records[{n}]"
    if not isinstance(item, dict) or set(item) != {"index", "record", "proof"}:
        raise DisclosureParseError("record entry must have exactly index, record, proof", field=where,
                                   got=sorted(item) if isinstance(item, dict) else type(item).__name__)
    index = item["index"]
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise DisclosureParseError("index must be a non-negative integer", field=f"{where}.index", got=index)
    record = item["record"]
    if not isinstance(record, dict) or set(record) != set(RECORD_FIELDS):
        raise DisclosureParseError("record must have exactly position, token_id, logprob",
                                   field=f"{where}.record",
                                   got=sorted(record) if isinstance(record, dict) else type(record).__name__)
    for key in ("position", "token_id"):
        value = record[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise DisclosureParseError(f"{key} must be a non-negative integer", field=f"{where}.record.{key}",
                                       got=value)
    if not isinstance(record["logprob"], int | float) or isinstance(record["logprob"], bool):
        raise DisclosureParseError("logprob must be a number", field=f"{where}.record.logprob",
                                   got=record["logprob"])
    proof = item["proof"]
    if not isinstance(proof, list):
        raise DisclosureParseError("proof must be a list of hex hashes", field=f"{where}.proof",
                                   got=type(proof).__name__)
    hashes = [_hex_bytes(h, f"{where}.proof[{i}]", 32) for i, h in enumerate(proof)]
    return index, dict(record), hashes


def _hex_bytes(value: Any, field: str, length: int) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * length:
        raise DisclosureParseError(f"expected {length} bytes as {2 * length} hex characters", field=field,
                                   got=value if not isinstance(value, str) else f"{len(value)} characters")
    if any(c not in "0123456789abcdef" for c in value):
        raise DisclosureParseError("expected lowercase hexadecimal", field=field, got=value)
    return bytes.fromhex(value)
