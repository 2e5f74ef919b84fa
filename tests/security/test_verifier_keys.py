"""Issue 20 §6: one verifier API key went to every verifier URL, plain `http://` included, so any
verifier's operator (or anyone on the path) could call all the others. Keys are now per verifier
(`SPECGUARD_VERIFIER_API_KEYS`, `URL KEY` per line) and never sent over plain http to a non-loopback
host unless the operator says so."""

from __future__ import annotations

import pytest
from support.slowloris import RawServer, answer

from specguard.consensus import quorum
from specguard.consensus.credentials import KEYS_FILE_ENV, LEGACY_KEY_ENV, PLAINTEXT_ENV, verifier_headers
from specguard.errors import ConfigError


def test_each_verifier_gets_only_its_own_key(tmp_path, monkeypatch):
    with RawServer(answer()) as one, RawServer(answer()) as two, RawServer(answer()) as three:
        keys = tmp_path / "verifier-keys"
        keys.write_text(f"# url key\n{one.url}/ key-for-one-1\n{two.url} key-for-two-2\n")
        monkeypatch.setenv(KEYS_FILE_ENV, str(keys))
        monkeypatch.delenv(LEGACY_KEY_ENV, raising=False)
        for server in (one, two, three):
            quorum._post_one(server.url, {"nonce": "00"}, timeout=30)
        assert one.seen[0].headers["authorization"] == "Bearer key-for-one-1"
        assert two.seen[0].headers["authorization"] == "Bearer key-for-two-2"
        assert "authorization" not in three.seen[0].headers  # no key listed: none sent


def test_no_key_over_plain_http_unless_the_operator_says_so(tmp_path):
    keys = tmp_path / "verifier-keys"
    keys.write_text("http://verifier.example:8081 remote-key-1\nhttps://secure.example key-2-secure\n")
    env = {KEYS_FILE_ENV: str(keys)}
    with pytest.raises(ConfigError, match="plain http") as err:
        verifier_headers("http://verifier.example:8081", env)
    assert err.value.field == "verifier"
    assert verifier_headers("http://verifier.example:8081", {**env, PLAINTEXT_ENV: "1"}) == {
        "Authorization": "Bearer remote-key-1"}
    assert verifier_headers("https://secure.example:443/", env) == {"Authorization": "Bearer key-2-secure"}
    assert verifier_headers("https://other.example", env) is None


def test_the_single_shared_key_is_refused_with_what_to_use_instead():
    with pytest.raises(ConfigError, match=KEYS_FILE_ENV):
        verifier_headers("https://v.example", {LEGACY_KEY_ENV: "one-key-for-all"})
