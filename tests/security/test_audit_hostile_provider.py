"""A hostile audited provider cannot crash `specguard audit run`, nor its resume (issue 11 §7).

Attacker: the provider under audit. It answers HTTP 200 with bodies that break the chat
completion contract: `"top_logprobs": 5` (an int where a list is expected), a 400-digit
logprob, NaN, a 5000-digit integer (Python's json refuses it with ValueError), huge strings,
more tokens than max_tokens, more alternatives than asked. Each must be a typed provider fault
recorded for its query, the run must finish (inconclusive) and resuming from raw.jsonl must
finish again without re-querying. A real socket server on 127.0.0.1, started by the test.
"""

from __future__ import annotations

import json
import socket
import threading

import pytest
from click.testing import CliRunner
from support.audit_providers import make_audit_model_dir
from support.slowloris import RawServer, Seen

from specguard.audit.client import ProviderFault, validate_answer

MAX_TOKENS, TOP = 4, 2


def _entry(token: str = "a", logprob: str = "-0.5", top: str = "[]") -> str:
    return f'{{"token": "{token}", "logprob": {logprob}, "bytes": [97], "top_logprobs": {top}}}'


def _choice(content: str = '"a"', entries: list[str] | None = None) -> str:
    lp = "null" if entries is None else '{"content": [' + ", ".join(entries) + "]}"
    return f'{{"choices": [{{"index": 0, "message": {{"role": "assistant", "content": {content}}}, ' \
           f'"logprobs": {lp}, "finish_reason": "length"}}]}}'


#: (name, raw body, the field the fault must name); each is valid HTTP 200 with a JSON-ish body
HOSTILE = [
    ("int-top-logprobs", _choice(entries=[_entry(top="5")]), "top_logprobs"),
    ("400-digit-logprob", _choice(entries=[_entry(logprob="-" + "9" * 400)]), "logprob"),
    ("nan-logprob", _choice(entries=[_entry(logprob="NaN")]), "logprob"),
    ("infinite-logprob", _choice(entries=[_entry(logprob="-1e400")]), "logprob"),
    ("positive-logprob", _choice(entries=[_entry(logprob="3.5")]), "logprob"),
    ("huge-content", _choice(content=json.dumps("x" * 200_000)), "content"),
    ("too-many-tokens", _choice(entries=[_entry()] * (MAX_TOKENS + 3)), "logprobs.content"),
    ("too-many-alternatives", _choice(entries=[_entry(top="[" + ", ".join([_entry(top="[]")] * (TOP + 3)) + "]")]),
     "top_logprobs"),
    ("token-not-a-string", _choice(entries=['{"token": 123, "logprob": -1}']), "token"),
    ("huge-token", _choice(entries=[_entry(token="y" * 5000)]), "token"),
    ("choices-not-a-list", '{"choices": "nope"}', "choices"),
    ("logprobs-content-object", _choice().replace('"logprobs": null', '"logprobs": {"content": {"a": 1}}'),
     "logprobs.content"),
]
#: bodies Python's json cannot even parse: logged as malformed, never a crash
UNPARSEABLE = [
    ("5000-digit-integer", _choice(entries=[_entry(logprob="-" + "9" * 5000)])),
    ("deep-nesting", "[" * 50_000 + "]" * 50_000),
]


def _scripted(bodies: list[str]):
    """Answer the n-th request with bodies[n] (then 400s)."""
    lock = threading.Lock()
    served = [0]

    def respond(conn: socket.socket, request: Seen, stop: threading.Event) -> None:
        with lock:
            n = served[0]
            served[0] += 1
        if n < len(bodies):
            body, status = bodies[n].encode(), "200 OK"
        else:
            body, status = b'{"error": {"message": "script over"}}', "400 Bad Request"
        conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + body)

    return respond


@pytest.mark.parametrize("name,body,field", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_validate_answer_names_the_broken_field(name, body, field):
    request = {"max_tokens": MAX_TOKENS, "logprobs": True, "top_logprobs": TOP}
    with pytest.raises(ProviderFault) as info:
        validate_answer(json.loads(body), request)
    assert field in (info.value.field or ""), info.value.summary()


def test_honest_shaped_answer_passes_and_logprobs_only_when_asked():
    body = json.loads(_choice(entries=[_entry(top="[" + _entry(logprob="-1.5") + "]")]))
    asked = validate_answer(body, {"max_tokens": MAX_TOKENS, "logprobs": True, "top_logprobs": TOP})
    assert asked.content == "a" and asked.logprobs[0]["logprob"] == -0.5
    assert asked.logprobs[0]["top_logprobs"][0]["logprob"] == -1.5
    assert validate_answer(body, {"max_tokens": MAX_TOKENS}).logprobs is None


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    return make_audit_model_dir(tmp_path_factory.mktemp("hostile-ref") / "ref", seed=0, layers=2)


def test_audit_run_and_resume_survive_a_hostile_provider(tmp_path, reference_dir):
    from specguard.cli import _register_plugin_commands, cli

    _register_plugin_commands()
    bodies = [h[1] for h in HOSTILE] + [u[1] for u in UNPARSEABLE]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(len(bodies))))
    out = tmp_path / "out"

    def run(url: str):
        return CliRunner().invoke(cli, [
            "audit", "run", "--base-url", url, "--model", "claimed", "--reference", str(reference_dir),
            "--prompts", str(prompts), "--budget", str(len(bodies)), "--max-tokens", str(MAX_TOKENS),
            "--top-logprobs", str(TOP), "--honest-class", "fp32", "--calibration-prompts", "2",
            "--timeout", "10", "--max-retries", "0", "--out", str(out)])

    with RawServer(_scripted(bodies)) as server:
        first = run(server.url + "/v1")
        assert len(server.seen) == len(bodies)
    assert first.exception is None or isinstance(first.exception, SystemExit), first.output
    assert first.exit_code == 1, first.output  # inconclusive: the provider answered nothing usable
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "inconclusive"
    assert report["prompts"]["provider_faults"] == len(HOSTILE)
    problems = [p["problem"] for p in report["per_prompt"]]
    for (name, _body, field), problem in zip(HOSTILE, problems, strict=False):
        assert problem.startswith("provider fault") and field.split(".")[-1] in problem, (name, problem)
    assert problems[len(HOSTILE):] == ["no answer after retries"] * len(UNPARSEABLE)
    assert report["client"]["http_errors"].get("malformed") == len(UNPARSEABLE)

    # resume: the logged hostile answers are read back, validated again, and nothing crashes;
    # the provider is gone, so the unparseable ones fail cleanly as unanswered
    with RawServer(_scripted([])) as gone:
        again = run(gone.url + "/v1")
        assert len(gone.seen) == len(UNPARSEABLE), "parsed answers are reused, not re-queried"
    assert again.exit_code == 1, again.output
    resumed = json.loads((out / "report.json").read_text())
    assert resumed["prompts"]["provider_faults"] == len(HOSTILE)
    assert resumed["client"]["reused"] == len(HOSTILE)
