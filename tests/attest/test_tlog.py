"""The SQLite transparency log: roots and proofs, durability across kill -9, HTTP routes, `log verify`."""

from __future__ import annotations

import base64
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from support.asgi import app_client

from specguard.attest import merkle
from specguard.attest.checkpoint import verify_checkpoint
from specguard.attest.receipts import ReceiptIssuer
from specguard.attest.tlog import LogRangeError, TransparencyLog
from specguard.cli import main
from specguard.context import NodeContext
from specguard.errors import ConfigError
from specguard.keys import NodeKey, load_or_create_node_key
from specguard.plugins import receipts as plugin
from specguard.policies import load_policy

ORIGIN = "test.example/log"


def _key(n: int = 5) -> NodeKey:
    return NodeKey(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


def _data(i: int) -> bytes:
    return b'{"entry":%d}' % i


@pytest.fixture()
def filled(tmp_path: Path) -> TransparencyLog:
    log = TransparencyLog(tmp_path / "log.sqlite3", ORIGIN, _key())
    for i in range(37):
        assert log.append(_data(i)).index == i
    yield log
    log.close()


def test_roots_and_proofs_match_the_reference(filled: TransparencyLog) -> None:
    hashes = [merkle.leaf_hash(_data(i)) for i in range(37)]
    for size in range(38):
        root = filled.root(size)
        assert root == merkle.root_hash(hashes[:size])
        for index in range(size):
            proof = filled.inclusion_proof(index, size)
            assert proof == merkle.inclusion_proof(index, hashes[:size])
            merkle.verify_inclusion(index, size, hashes[index], proof, root)
        for old in range(1, size + 1):
            merkle.verify_consistency(old, size, filled.root(old), root, filled.consistency_proof(old, size))
    assert filled.entry(36) == _data(36)
    assert filled.leaf_hash(3) == hashes[3]


def test_checkpoint_is_signed_and_deterministic(filled: TransparencyLog) -> None:
    note = filled.checkpoint()
    cp = verify_checkpoint(note, [_key().public_bytes], origin=ORIGIN)
    assert (cp.size, cp.root) == (37, filled.root())
    assert filled.checkpoint(10) == filled.checkpoint(10)
    assert verify_checkpoint(filled.checkpoint(10), [_key().public_bytes]).root == filled.root(10)


def test_storage_is_durable_wal(filled: TransparencyLog) -> None:
    assert filled._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert filled._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_reopen_and_integrity(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    log = TransparencyLog(path, ORIGIN, _key())
    for i in range(9):
        log.append(_data(i))
    root = log.root()
    log.close()
    again = TransparencyLog(path, ORIGIN, _key())
    assert (again.size, again.root(), again.verify_integrity()) == (9, root, root)
    again.close()
    with pytest.raises(ConfigError, match="another origin"):
        TransparencyLog(path, "other.origin", _key())
    con = sqlite3.connect(path)
    con.execute("UPDATE leaves SET data = ? WHERE idx = 4", (b"tampered",))
    con.commit()
    con.close()
    tampered = TransparencyLog(path, ORIGIN, _key())
    with pytest.raises(ConfigError, match="does not match leaf data"):
        tampered.verify_integrity()
    tampered.close()


def test_failed_attach_rolls_back_the_leaf(filled: TransparencyLog) -> None:
    root = filled.root()

    def boom(appended: object) -> tuple[str, bytes]:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        filled.append(b"never", boom)
    assert (filled.size, filled.root()) == (37, root)
    assert filled._db.execute("SELECT COUNT(*) FROM leaves").fetchone()[0] == 37
    ok = filled.append(b"next", lambda a: ("r" * 32, b'{"receipt_id":"x"}'))
    assert ok.index == 37 and filled.get_receipt("r" * 32) == {"receipt_id": "x"}
    merkle.verify_inclusion(37, 38, merkle.leaf_hash(b"next"), ok.inclusion_proof, ok.root)


def test_range_errors(filled: TransparencyLog) -> None:
    for call in (lambda: filled.entry(37), lambda: filled.entry(-1), lambda: filled.inclusion_proof(0, 38),
                 lambda: filled.inclusion_proof(5, 5), lambda: filled.consistency_proof(6, 5),
                 lambda: filled.root(99), lambda: filled.entry(True)):
        with pytest.raises(LogRangeError) as err:
            call()
        assert err.value.field in {"index", "size", "old", "new"}


def test_second_writer_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite3"
    a = TransparencyLog(path, ORIGIN, _key())
    b = TransparencyLog(path, ORIGIN, _key())
    a.append(b"from a")
    assert b.append(b"from b").index == 1
    assert a.append(b"from a again").index == 2
    assert a.root() == merkle.root_hash([merkle.leaf_hash(d) for d in (b"from a", b"from b", b"from a again")])
    a.close()
    b.close()


_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from specguard.attest.tlog import TransparencyLog
    from specguard.keys import load_or_create_node_key
    home = Path(sys.argv[1])
    log = TransparencyLog(home / "log.sqlite3", "crash.example/log", load_or_create_node_key(home))
    i = log.size
    while True:
        a = log.append(b"entry-%d" % i)
        print("ack", a.index, a.checkpoint.encode().hex(), flush=True)
        i += 1
""")


def test_kill_dash_nine_loses_no_acknowledged_entry(tmp_path: Path) -> None:
    """The property is "every acknowledged entry is in the log", not contiguity of what was printed:
    the kill can land after an entry committed and before its "ack" line was written (that entry
    is in the log, unacknowledged, and the restarted writer continues after it)."""
    key = load_or_create_node_key(tmp_path)
    acked: list[int] = []
    rounds: list[list[int]] = []
    checkpoints: list[str] = []
    for _round in range(2):  # kill, restart, append more, kill again
        rounds.append([])
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        try:
            seen = 0
            for line in proc.stdout:
                _, index, cp_hex = line.split()
                acked.append(int(index))
                rounds[-1].append(int(index))
                checkpoints.append(bytes.fromhex(cp_hex).decode())
                seen += 1
                if seen == 25:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
    assert rounds[0] == list(range(len(rounds[0]))), "one writer acknowledges consecutive indices from 0"
    assert rounds[1] == list(range(rounds[1][0], rounds[1][0] + len(rounds[1])))
    assert rounds[1][0] > rounds[0][-1], "the restart continued after every acknowledged entry (never over one)"
    log = TransparencyLog(tmp_path / "log.sqlite3", "crash.example/log", key)
    try:
        assert log.size >= acked[-1] + 1
        for i in acked:
            assert log.entry(i) == b"entry-%d" % i
        root = log.verify_integrity()
        for note in checkpoints:
            old = verify_checkpoint(note, [key.public_bytes])
            merkle.verify_consistency(old.size, log.size, old.root, root, log.consistency_proof(old.size))
    finally:
        log.close()


# --- HTTP routes and `specguard log verify` ----------------------------------------------------


@pytest.fixture()
def served(tmp_path: Path):
    key = load_or_create_node_key(tmp_path)
    issuer = ReceiptIssuer(tmp_path, key, origin=ORIGIN)
    for i in range(6):
        issuer.log.append(_data(i), lambda a, i=i: (f"{i:032x}", b'{"log":{"index":%d},"receipt_id":"%032x"}' % (i, i)))
    node = NodeContext(model=None, policy=load_policy("dev"), home=tmp_path, node_key=key, receipts=issuer)
    app = FastAPI()
    plugin.register_routes(app=app, node=node)
    client = app_client(app, raise_server_exceptions=False)
    yield client, issuer, key
    client.close()
    issuer.close()


def test_routes_answer_and_errors_are_openai_shaped(served) -> None:
    client, issuer, key = served
    r = client.get("/specguard/v1/log/checkpoint")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert verify_checkpoint(r.text, [key.public_bytes]).size == 6
    e = client.get("/specguard/v1/log/entries/2").json()
    assert base64.b64decode(e["data"]) == _data(2) and e["envelope"] == {"entry": 2}
    p = client.get("/specguard/v1/log/proof/inclusion", params={"index": 2, "size": 5}).json()
    merkle.verify_inclusion(2, 5, merkle.leaf_hash(_data(2)), [bytes.fromhex(h) for h in p["inclusion_proof"]],
                            bytes.fromhex(p["root"]))
    c = client.get("/specguard/v1/log/proof/consistency", params={"old": 3}).json()
    merkle.verify_consistency(3, 6, issuer.log.root(3), issuer.log.root(),
                              [bytes.fromhex(h) for h in c["consistency_proof"]])
    assert client.get(f"/specguard/v1/receipts/{2:032x}").json() == {"log": {"index": 2}, "receipt_id": f"{2:032x}"}
    bad = [
        ("/specguard/v1/log/entries/6", 404), ("/specguard/v1/log/entries/-1", 400),
        ("/specguard/v1/log/entries/abc", 400), ("/specguard/v1/log/entries/99999999999999999999999", 400),
        ("/specguard/v1/log/proof/inclusion?index=6&size=6", 400),
        ("/specguard/v1/log/proof/inclusion?index=0&size=7", 400),
        ("/specguard/v1/log/proof/inclusion?size=3", 400), ("/specguard/v1/log/proof/inclusion?index=01", 400),
        ("/specguard/v1/log/proof/consistency?old=4&new=3", 400),
        ("/specguard/v1/log/proof/consistency?old=1&new=9", 400),
        ("/specguard/v1/log/proof/consistency?old=x", 400),
        ("/specguard/v1/receipts/nope", 404), ("/specguard/v1/receipts/" + "f" * 32, 404),
    ]
    for url, status in bad:
        r = client.get(url)
        assert r.status_code == status, url
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}, url


def _run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    print(captured.err, file=sys.stderr)
    return code, captured.out


def test_log_verify_over_http_and_locally(served, tmp_path: Path, monkeypatch, capsys) -> None:
    client, issuer, key = served
    from specguard.web import http as specguard_http

    class _Borrowed:  # the in-process app's client in place of a network one (kept open)
        def __enter__(self):
            return client

        def __exit__(self, *exc):
            return None

    monkeypatch.setattr(specguard_http, "client", lambda **kw: _Borrowed())
    saved = tmp_path / "saved.txt"
    url = "http://testserver"
    code, out = _run_cli(["log", "verify", "--url", url, "--key", key.public_hex, "--save", str(saved)], capsys)
    assert code == 0 and "size 6" in out
    for i in range(6, 11):
        issuer.log.append(_data(i))
    code, out = _run_cli(["log", "verify", "--url", url, "--key", key.public_hex, "--checkpoint", str(saved),
                          "--entries", "3", "--json"], capsys)
    assert code == 0 and '"tree_size": 11' in out and "consistent with saved checkpoint of size 6" in out
    code, _ = _run_cli(["log", "verify", "--db", str(issuer.log.path), "--checkpoint", str(saved)], capsys)
    assert code == 10  # no pinned key and no --allow-unpinned
    code, _ = _run_cli(["log", "verify", "--db", str(issuer.log.path), "--checkpoint", str(saved),
                        "--allow-unpinned"], capsys)
    assert code == 2  # unpinned allowed, but these test entries name no key
    code, out = _run_cli(["log", "verify", "--db", str(issuer.log.path), "--checkpoint", str(saved),
                          "--key", key.public_hex], capsys)
    assert code == 0 and "consistent with saved checkpoint of size 6" in out
    # a checkpoint from a forked log with the same key and origin is caught
    fork = TransparencyLog(tmp_path / "fork" / "f.sqlite3", ORIGIN, key)
    for i in range(8):
        fork.append(b"fork-%d" % i)
    saved.write_text(fork.checkpoint())
    fork.close()
    code, _ = _run_cli(["log", "verify", "--url", url, "--key", key.public_hex, "--checkpoint", str(saved)], capsys)
    assert code == 13
    code, _ = _run_cli(["log", "verify", "--url", url, "--key", _key(9).public_hex], capsys)
    assert code == 13
    code, out = _run_cli(["log", "show", "--db", str(issuer.log.path)], capsys)
    assert code == 0 and '"tree_size": 11' in out
