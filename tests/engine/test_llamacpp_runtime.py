"""The llama.cpp runtime (issue 21): a GGUF served as is, with no torch weights and no torch at all.

- it names the model, tokenizes, applies the chat template and decodes exactly as the torch
  runtime does on the same GGUF (same digests, prompt ids, EOS ids, context, text);
- the llamacpp engine gives the same output on it as on a torch-loaded target;
- teacher-forced scoring with llama.cpp re-derives what the engine emitted;
- engines and drafters that compute with torch weights refuse it with a UsageError;
- `specguard serve --engine llamacpp` on the default model: the process never maps libtorch, its
  peak resident memory stays under a generous bound (measured numbers: docs/benchmarks.md), and
  its receipts still name the engine, its version and the GGUF's SHA-256.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import httpx
import pytest
from support.servers import free_port, specguard_cmd, start_process

from specguard.drafters.base import NoDrafter
from specguard.engine.factory import make_drafter, make_engine
from specguard.errors import UsageError
from specguard.models import load_model
from specguard.runtime import generate, score
from specguard.transcript import SamplingParams

pytest.importorskip("llama_cpp", reason="the llama.cpp runtime needs llama-cpp-python (make install)")

#: generous: measured 458 MB at the default 8192-token context (docs/benchmarks.md); the torch
#: path this replaced peaked at ~1.4 GB
PEAK_BOUND_KB = 600_000

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "Und jetzt 3×3 — ünïcödé? 🙂"}],
    [{"role": "user", "content": "  spaces\tand\nnewlines  "}],
]


@pytest.fixture(scope="module")
def native():
    return load_model(None, runtime="llamacpp")


def test_same_identity_tokenizer_and_template_as_the_torch_runtime(native, default_model):
    assert native.model is None and native.runtime == "llamacpp" and native.dtype == "Q4_1"
    assert native.digest == default_model.digest
    assert native.tokenizer_digest == default_model.tokenizer_digest
    assert native.eos_token_ids == default_model.eos_token_ids
    assert (native.max_context, native.vocab_size) == (default_model.max_context, default_model.vocab_size)
    for messages in CONVERSATIONS:
        assert native.encode_chat(messages) == default_model.encode_chat(messages)
    text = "Hello, world! Ça va? 3.14 — done.<|im_end|>"
    assert native.encode(text) == default_model.encode(text)
    ids = default_model.encode_chat(CONVERSATIONS[1]) + [0, 1, 2, 49151]
    for skip in (True, False):
        assert native.tokenizer.decode(ids, skip_special_tokens=skip) == \
            default_model.tokenizer.decode(ids, skip_special_tokens=skip)
    gguf = default_model.gguf_path
    assert native.describe()["file_digest"] == "sha256:" + hashlib.sha256(Path(gguf).read_bytes()).hexdigest()


def test_llamacpp_engine_output_is_the_same_on_either_runtime(native, default_model):
    prompt = default_model.encode_chat(CONVERSATIONS[0])
    params = SamplingParams(max_tokens=12)
    on_native = generate(native, prompt, params)
    on_torch = make_engine(default_model, NoDrafter(), "llamacpp").generate(prompt, params)
    assert on_native.output_ids == on_torch.output_ids and on_native.text == on_torch.text
    assert on_native.engine == "llamacpp" and on_native.model_file_digest == on_torch.model_file_digest
    assert on_native.model_digest == native.digest == on_torch.model_digest


def test_teacher_forced_llamacpp_scoring_rederives_greedy_output(native):
    prompt = native.encode_chat(CONVERSATIONS[2])
    t = generate(native, prompt, SamplingParams(max_tokens=10))
    scored = score(native, prompt, t.output_ids, top_k=3)
    # prefill (one batch) and decode (one token per step) are different llama.cpp schedules: a near tie
    # (here one position has a 0.014 margin) may flip; every clear choice is re-derived
    clear = [i for i, r in enumerate(t.tokens) if r.margin > 0.1]
    assert len(clear) >= 8
    assert [scored.positions[i].expected_id for i in clear] == [t.output_ids[i] for i in clear]
    assert all(len(p.top) == 3 and p.top[0][1] >= p.top[-1][1] for p in scored.positions)
    assert [p.logprob for p in scored.positions] == pytest.approx([r.logprob for r in t.tokens], abs=0.15)


def test_torch_engines_and_drafters_refuse_the_llamacpp_runtime(native):
    for engine in ("specguard", "transformers"):
        with pytest.raises(UsageError, match="torch weights") as err:
            make_engine(native, NoDrafter(), engine)
        assert err.value.field == "engine"
    with pytest.raises(UsageError, match="torch weights") as err:
        make_drafter("early-exit", native, {})
    assert err.value.field == "drafter"


def _peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def _receipt_statement(body: dict) -> dict:
    payload = body["specguard"]["receipt"]["envelope"]["payload"]
    return json.loads(base64.b64decode(payload))


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="peak memory is read from /proc (Linux)")
def test_serve_llamacpp_loads_no_torch_and_stays_small(tmp_path, default_model):
    load_model(None, runtime="llamacpp")  # the tokenizer cache exists (it is written by a child process anyway)
    port = free_port()
    srv = start_process(specguard_cmd("serve", "--engine", "llamacpp", "--threads", "1", "--port", str(port)), port,
                        env={"SPECGUARD_HOME": str(tmp_path / "home"), "SPECGUARD_MODEL_CACHE": _cache_root()})
    try:
        body = {"model": "smollm2-135m", "messages": CONVERSATIONS[0], "max_tokens": 8, "temperature": 0}
        resp = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=120.0)
        assert resp.status_code == 200, resp.text
        peak = _peak_kb(srv.pid)
        maps = Path(f"/proc/{srv.pid}/maps").read_text()
        health = httpx.get(srv.url + "/health", timeout=10.0).json()
    finally:
        srv.stop()
    assert "libtorch" not in maps, "the llama.cpp server mapped torch"
    assert peak < PEAK_BOUND_KB, f"peak RSS {peak} kB"
    assert health["runtime"] == {"name": "llamacpp", "dtype": "Q4_1", "device": "cpu"}
    assert health["model_digest"] == default_model.digest
    engine = _receipt_statement(resp.json())["predicate"]["engine"]
    gguf = Path(default_model.gguf_path)
    assert engine["name"] == "llamacpp" and engine["version"].startswith("llama-cpp-python ")
    assert engine["model_file_digest"] == "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()


def _cache_root() -> str:
    from specguard.models import model_cache_dir

    return str(model_cache_dir())


def test_verify_model_with_a_gguf_reads_only_its_tokenizer(default_model):
    """`specguard verify --model FILE.gguf` checks the response text with the GGUF's own tokenizer
    (no weights): the same digest and decoding as the torch runtime's, so old receipts still check."""
    from specguard.plugins.receipts.cli import _load

    loaded = _load(str(default_model.gguf_path))
    assert loaded.runtime == "llamacpp" and loaded.model is None  # no torch weights
    assert loaded.tokenizer_digest == default_model.tokenizer_digest
    ids = default_model.encode_chat(CONVERSATIONS[1])
    assert loaded.decode(ids) == default_model.decode(ids)
    assert loaded.encode_chat(CONVERSATIONS[1]) == ids  # verify --request re-tokenizes with it
