"""Core pieces: canonical JSON (RFC 8785), errors, policies, model references, transcripts."""

from __future__ import annotations

import json
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specguard.canonical import CanonicalizationError, canonical_json, format_number, lp, tagged_hash
from specguard.errors import (
    ConfigError,
    ModelError,
    ParseError,
    SpecguardError,
    ValidationError,
    VerificationError,
)
from specguard.models import resolve
from specguard.policies import load_policy, preset_names
from specguard.transcript import SamplingParams, Step, TokenRecord, Transcript, ids_digest

# RFC 8785 Appendix B: IEEE-754 bit patterns and their canonical text
RFC8785_NUMBERS = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize("bits,text", RFC8785_NUMBERS)
def test_rfc8785_number_formatting(bits, text):
    value = struct.unpack(">d", bytes.fromhex(bits))[0]
    assert format_number(value) == text


def test_rfc8785_object_ordering_and_strings():
    value = {"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",
             "1": "One", "\U0001f600": "Emoji: Grinning Face", "\u0080": "Control", "\u00f6": "Latin Small Letter O With Diaeresis"}
    out = canonical_json(value).decode()
    keys = [k for k in json.loads(out)]
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    assert canonical_json({"a": "\u0000\u001f\"\\/"}) == b'{"a":"\\u0000\\u001f\\"\\\\/"}'
    assert canonical_json([1, True, None, 1.5, "x"]) == b'[1,true,null,1.5,"x"]'


@pytest.mark.parametrize("bad", [math.nan, math.inf, {1: 2}, {"a": object()}, b"bytes", "\ud800"])
def test_canonical_json_rejects_non_json(bad):
    with pytest.raises(CanonicalizationError):
        canonical_json(bad)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_canonical_numbers_round_trip(x):
    assert float(format_number(x)) == x


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8) |
                    st.floats(allow_nan=False, allow_infinity=False),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4), max_leaves=12))
def test_canonical_json_parses_back_and_is_stable(value):
    text = canonical_json(value)
    assert canonical_json(json.loads(text)) == text


def test_length_prefix_and_tagged_hash_are_unambiguous():
    assert lp(b"ab", b"c") != lp(b"a", b"bc")
    assert tagged_hash("t", b"ab", b"c") != tagged_hash("t", b"a", b"bc")
    assert tagged_hash("t1", b"x") != tagged_hash("t2", b"x")


def test_errors_name_field_got_expected():
    e = VerificationError("signature does not verify", field="signature", got="ab", expected="cd")
    assert "field=signature" in str(e) and "got=ab" in str(e) and "expected=cd" in str(e)
    assert e.to_dict()["exit_code"] == 4 and "expected: cd" in e.diagnostics()
    p = ParseError("too short", field="header", offset=0x30)
    assert "0x30" in str(p) and p.exit_code == 3
    v = ValidationError("policy failed", failures=[SpecguardError("a", field="x"), SpecguardError("b", field="y")])
    assert v.exit_code == 5 and "field=x" in v.diagnostics() and len(v.to_dict()["failures"]) == 2


def test_policy_presets_and_errors(tmp_path, caplog):
    assert {"dev", "strict"} <= set(preset_names())
    dev = load_policy("dev")
    assert dev.insecure and any("INSECURE" in r.message for r in caplog.records)
    strict = load_policy("strict")
    assert not strict.insecure and strict.digest.startswith("sha256:") and strict.digest != dev.digest
    assert strict.section("attestation")["allow_simulated"] is False
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_policy(bad)
    with pytest.raises(ConfigError, match="unknown policy preset"):
        load_policy("nonexistent")
    with pytest.raises(ConfigError, match="cannot read"):
        load_policy(tmp_path / "missing.toml")
    notable = tmp_path / "t.toml"
    notable.write_text('attestation = "x"')
    with pytest.raises(ConfigError, match="must be a table"):
        load_policy(notable).section("attestation")


def test_model_references(tmp_path):
    assert resolve("smollm2-135m")[0] == "gguf"
    assert resolve("org/name") == ("hub", "org/name")
    with pytest.raises(ModelError, match="GGUF file not found"):
        resolve(str(tmp_path / "x.gguf"))
    with pytest.raises(ModelError, match="no config.json"):
        resolve(str(tmp_path))
    with pytest.raises(ModelError, match="unknown model reference"):
        resolve("not a model")


def test_transcript_round_trip_and_binding():
    params = SamplingParams(max_tokens=4, temperature=0.5, seed=7, stop=("\n",))
    t = Transcript("m", "sha256:aa", "sha256:bb", [1, 2], [3, 4],
                   [TokenRecord(0, 3, -0.25, [(3, -0.25), (5, -2.0)], 0.5), TokenRecord(1, 4, -1.0)],
                   [Step(0, "ngram", [3, 9], 1, [3, 4])], params, "length", "ngram")
    back = Transcript.from_json(json.loads(json.dumps(t.to_json())))
    assert back.binding_digest() == t.binding_digest()
    assert back.to_json() == t.to_json()
    other = Transcript.from_json({**t.to_json(), "output_ids": [3, 5]})
    assert other.binding_digest() != t.binding_digest()
    assert ids_digest([1, 2]) != ids_digest([258])
    m = t.metrics()
    assert m["acceptance_rate"] == 0.5 and m["mean_accepted_tokens"] == 2.0
