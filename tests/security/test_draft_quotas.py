"""Issue 20 §4: any client of a drafting server could evict every other client's sessions (creating
sessions evicted the least recently used one, whoever owned it). Sessions now belong to the client
that created them (its API key, else its address), each client has a quota, and a full server never
evicts a client below the requester's own share."""

from __future__ import annotations

import pytest
from support.asgi import app_client
from support.tiny import tiny_model

from specguard.serve.draft_server import create_draft_app

KEYS = [f"client-key-{i:02d}" for i in range(12)]


@pytest.fixture(scope="module")
def app():
    return create_draft_app(tiny_model(seed=2, vocab_size=64), "ngram", {}, max_sessions=8,
                            max_sessions_per_client=4, api_keys=KEYS)


def _client(app, key: str):
    return app_client(app, headers={"Authorization": f"Bearer {key}"})


def _create(http) -> tuple[int, str | None]:
    resp = http.post("/v1/draft/sessions", json={"prompt_ids": [1, 2, 3, 1, 2]})
    return resp.status_code, resp.json().get("session")


def _alive(http, sid: str) -> bool:
    resp = http.post(f"/v1/draft/sessions/{sid}/propose", json={"append": [], "rollback_to": 5, "k": 2})
    assert resp.status_code in (200, 404), resp.text
    return resp.status_code == 200


def test_one_client_cannot_evict_or_use_anothers_sessions(app):
    victim, attacker = _client(app, KEYS[0]), _client(app, KEYS[1])
    mine = [_create(victim)[1] for _ in range(2)]
    theirs = [_create(attacker)[1] for _ in range(20)]  # far past its quota: it replaces its own
    assert all(_alive(victim, sid) for sid in mine)
    assert sum(_alive(attacker, sid) for sid in theirs) == 4
    # a session id is no capability for anyone but its owner
    assert not _alive(attacker, mine[0])
    assert attacker.delete(f"/v1/draft/sessions/{mine[0]}").json() == {"deleted": False}
    assert _alive(victim, mine[0])
    stats = victim.get("/v1/draft/health").json()
    assert stats["max_sessions_per_client"] == 4 and stats["sessions"] == 6


def test_a_full_server_evicts_only_from_bigger_holders(app):
    """8 sessions in all: new clients take sessions from the biggest holder while it has more than
    them, and get 429 once nobody does; the 1-session victim keeps its session throughout."""
    victim = _client(app, KEYS[2])
    status, kept = _create(victim)
    assert status == 200
    statuses = [_create(_client(app, key))[0] for key in KEYS[3:]]
    assert 429 in statuses and all(s in (200, 429) for s in statuses)
    assert _alive(victim, kept)
    counts = app.state.sessions.stats()
    assert counts["sessions"] <= 8 and counts["sessions_refused"] >= 1
