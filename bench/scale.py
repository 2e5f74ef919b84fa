"""Real-size runtimes (issue 21): peak memory, time to first answer and tokens/s per command.

Builds random-weight GGUFs of real Llama shapes once into a cache (`$SPECGUARD_HOME/bench-gguf/`,
never committed) and runs specguard commands on them, each as its own process, reading the
process's peak resident memory (`VmHWM` from /proc, children included for servers):

    shape  layers  hidden  heads/kv  ffn    vocab   tied   Q4_K file   Q8_0 file
    1b     16      2048    32/8      8192   128256  yes    ~0.7 GB     ~1.3 GB
    3b     28      3072    24/8      8192   128256  yes    ~1.7 GB     ~3.2 GB
    8b     32      4096    32/8      14336  128256  no     ~4.5 GB     ~8.5 GB

Weights are random quantized blocks (random 4-/8-bit codes, fixed small scales): the arithmetic
is real-size, the text is noise. The tokenizer and chat template are the default model's
(SmolLM2's BPE, from its GGUF), padded with reserved control tokens up to Llama 3's 128256 ids
so the embedding and output matrices have their real shapes.

Commands (`--commands`, comma-separated):
- `serve-llamacpp`: `specguard serve --engine llamacpp` (the llama.cpp runtime: no torch weights);
  time to first answer = process start to the first chat completion; tokens/s of a
  `--max-tokens` completion (ignore_eos);
- `serve-torch`: `specguard serve --dtype bf16 --no-batching --drafter none` (the torch runtime: the
  GGUF dequantized tensor by tensor straight into bf16 parameters, no fp32 copy); its peak is also
  given over the bf16 weights (2 bytes per parameter; the goal is at most 1.2x);
- `generate-torch`: one `specguard generate --dtype bf16 --json` process (load, then `--max-tokens`
  tokens): the same load without a server, for memory;
- `verify-model`: `specguard verify RESPONSE --model FILE.gguf` on a response the serve-llamacpp
  run saved (tokenizer from the GGUF's metadata only);
- `digest`: `specguard models FILE.gguf --runtime llamacpp` (the v3 digest streamed from disk).

    python bench/scale.py [--shapes default,1b,3b,8b] [--quant q4_k|q8_0]
                          [--commands digest,serve-llamacpp,verify-model,serve-torch,generate-torch]
                          [--max-tokens 32] [--threads 2] [--max-model-len N] [--no-doc]

`default` is the default model's own GGUF (SmolLM2-135M Q4_1, 98 MB), not a random one.

Not run in CI (multi-GB files). Writes section "scale-SHAPES-QUANT" of docs/benchmarks.md unless --no-doc.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from _report import table, write_section

from specguard.testing.processes import free_port, specguard_cmd, start_process

ROOT = Path(__file__).resolve().parent.parent

SHAPES = {
    # name: (layers, hidden, heads, kv_heads, ffn, vocab, tied)
    "tiny": (2, 256, 4, 2, 512, 128256, True),  # to check the script quickly
    "1b": (16, 2048, 32, 8, 8192, 128256, True),
    "3b": (28, 3072, 24, 8, 8192, 128256, True),
    "8b": (32, 4096, 32, 8, 14336, 128256, False),
}
QUANTS = {"q4_k": "Q4_K", "q8_0": "Q8_0"}
PROMPT = [{"role": "user", "content": "Write a short poem about the sea."}]


def cache_dir() -> Path:
    from specguard.models import home_dir

    return home_dir() / "bench-gguf"


def _random_blocks(rng: np.random.Generator, qtype, rows: int, cols: int) -> np.ndarray:
    """`rows` rows of random quantized blocks (uint8 bytes), with small finite fp16 scales."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    per_row = cols // block
    data = rng.integers(0, 256, size=(rows, per_row, size), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.002).tobytes(), dtype=np.uint8)
    if qtype == gguf.GGMLQuantizationType.Q8_0:
        data[:, :, 0:2] = scale  # d
    else:  # Q4_K: d, dmin (fp16), then 12 bytes of 6-bit scales and mins, then 4-bit codes
        data[:, :, 0:2] = scale
        data[:, :, 2:4] = np.frombuffer(np.float16(0.001).tobytes(), dtype=np.uint8)
    return data.reshape(rows, per_row * size)


def _tokenizer_fields(vocab: int) -> list[tuple[str, object, object, object]]:
    """The default model's tokenizer keys, its token list padded with control tokens to `vocab`."""
    import gguf

    from specguard.models import resolve
    from specguard.runtime.gguf_file import read_gguf

    _, path = resolve(None)
    meta = read_gguf(path).metadata
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta["tokenizer.ggml.token_type"])
    extra = vocab - len(tokens)
    tokens += [f"<|reserved_special_token_{i}|>" for i in range(extra)]
    types += [gguf.TokenType.CONTROL] * extra
    v = gguf.GGUFValueType
    out = [("tokenizer.ggml.model", meta["tokenizer.ggml.model"], v.STRING, None),
           ("tokenizer.ggml.tokens", tokens, v.ARRAY, v.STRING),
           ("tokenizer.ggml.token_type", types, v.ARRAY, v.INT32),
           ("tokenizer.ggml.merges", list(meta["tokenizer.ggml.merges"]), v.ARRAY, v.STRING)]
    for key in ("tokenizer.ggml.pre", "tokenizer.chat_template"):
        if key in meta:
            out.append((key, meta[key], v.STRING, None))
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
                "tokenizer.ggml.unknown_token_id"):
        if key in meta:
            out.append((key, int(meta[key]), v.UINT32, None))
    return out


def build_gguf(shape: str, quant: str, seed: int = 0) -> Path:
    """The cached random GGUF for (shape, quant), written tensor by tensor (memory: one tensor)."""
    import gguf

    path = cache_dir() / f"llama-{shape}-{quant}.gguf"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    layers, hidden, heads, kv, ffn, vocab, tied = SHAPES[shape]
    qtype = gguf.GGMLQuantizationType[QUANTS[quant]]
    tmp = path.with_suffix(".tmp")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name(f"random-llama-{shape}")
    w.add_context_length(8192)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(hidden // heads)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M if quant == "q4_k" else gguf.LlamaFileType.MOSTLY_Q8_0)
    for key, value, vtype, sub in _tokenizer_fields(vocab):
        w.add_key_value(key, value, vtype, sub)
    head_dim = hidden // heads
    plan: list[tuple[str, int, int]] = [("token_embd.weight", vocab, hidden)]  # (name, rows, cols); 0 rows = norm
    for i in range(layers):
        plan += [(f"blk.{i}.attn_norm.weight", 0, hidden), (f"blk.{i}.attn_q.weight", hidden, hidden),
                 (f"blk.{i}.attn_k.weight", kv * head_dim, hidden), (f"blk.{i}.attn_v.weight", kv * head_dim, hidden),
                 (f"blk.{i}.attn_output.weight", hidden, hidden), (f"blk.{i}.ffn_norm.weight", 0, hidden),
                 (f"blk.{i}.ffn_gate.weight", ffn, hidden), (f"blk.{i}.ffn_up.weight", ffn, hidden),
                 (f"blk.{i}.ffn_down.weight", hidden, ffn)]
    plan.append(("output_norm.weight", 0, hidden))
    if not tied:
        plan.append(("output.weight", vocab, hidden))
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    for name, rows, cols in plan:
        if rows == 0:
            w.add_tensor_info(name, (cols,), np.dtype(np.float32), cols * 4)
        else:
            w.add_tensor_info(name, (rows, cols // block * size), np.dtype(np.uint8), rows * cols // block * size,
                              raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for _name, rows, cols in plan:
        w.write_tensor_data(np.ones(cols, dtype=np.float32) if rows == 0 else _random_blocks(rng, qtype, rows, cols))
    w.close()
    os.replace(tmp, path)
    return path


# -- measuring ------------------------------------------------------------------------------------

def _peak_kb(pid: int) -> int:
    """Peak resident memory (VmHWM, kB) of a process and its live children."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


class _PeakWatcher:
    """Polls a process's peak RSS until stopped (VmHWM is already a high-water mark; polling
    catches children that exit early)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _peak_kb(self.pid))
            time.sleep(0.05)

    def stop(self) -> int:
        self.peak = max(self.peak, _peak_kb(self.pid))
        self._stop.set()
        self._thread.join()
        return self.peak


def run_once(argv: list[str], env: dict[str, str]) -> tuple[int, float, str]:
    """Run a command to its end: (peak RSS kB, seconds, output)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **env})
    watcher = _PeakWatcher(proc.pid)
    out, _ = proc.communicate()
    peak = watcher.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv!r} failed ({proc.returncode}):\n{out.decode(errors='replace')[-3000:]}")
    return peak, time.perf_counter() - start, out.decode(errors="replace")


def serve_once(argv: list[str], env: dict[str, str], max_tokens: int, save: Path | None) -> dict[str, float]:
    """Start a server, ask one chat completion (first answer), then a `max_tokens` one; stop it."""
    port = free_port()
    start = time.perf_counter()
    srv = start_process([*argv, "--port", str(port)], port, env=env, timeout=1800.0)
    watcher = _PeakWatcher(srv.pid)
    try:
        body = {"model": argv[argv.index("--model") + 1], "messages": PROMPT, "max_tokens": 1, "temperature": 0}
        first = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=600.0)
        first.raise_for_status()
        first_answer = time.perf_counter() - start
        body = {**body, "max_tokens": max_tokens, "ignore_eos": True}
        t0 = time.perf_counter()
        resp = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=600.0)
        resp.raise_for_status()
        seconds = time.perf_counter() - t0
        tokens = int(resp.json()["usage"]["completion_tokens"])
        if save is not None:
            save.write_text(resp.text)
    finally:
        peak = watcher.stop()
        srv.stop()
    return {"peak_kb": peak, "first_answer_s": first_answer, "tokens_per_s": tokens / seconds if seconds else 0.0}


def model_path(shape: str, quant: str) -> Path:
    """`default`: the default model's own GGUF (SmolLM2-135M Q4_1); else the cached random GGUF."""
    if shape == "default":
        from specguard.models import resolve

        return Path(resolve(None)[1])
    return build_gguf(shape, quant)


# -- the torch runtime at bf16 (a GGUF streamed tensor by tensor, no fp32 copy) -----------------------

TORCH_COMMANDS = ("serve-torch", "generate-torch")


def bf16_weight_bytes(path: Path) -> int:
    """The model's weights at bf16: 2 bytes per parameter (a tied output matrix counted once)."""
    from specguard.runtime.gguf_file import read_gguf

    return 2 * sum(int(np.prod(t.shape, dtype=np.int64)) for t in read_gguf(path).tensors)


def torch_row(command: str, path: Path, env: dict[str, str], max_tokens: int, threads: int, row) -> dict:
    """`serve-torch`: `serve --dtype bf16` (time to first answer, tokens/s); `generate-torch`: one
    `generate --dtype bf16 --json` process (load + `max_tokens` tokens, for its peak). Both report
    the peak over the bf16 weights (the issue's goal: at most 1.2x)."""
    weights = bf16_weight_bytes(path)
    common = ["--model", str(path), "--dtype", "bf16", "--threads", str(threads), "--drafter", "none"]
    if command == "serve-torch":
        r = serve_once(specguard_cmd("serve", *common, "--no-batching"), env, max_tokens, None)
        out = row(command + " (bf16)", int(r["peak_kb"]), r["first_answer_s"], r["tokens_per_s"])
    else:
        peak, secs, _ = run_once(specguard_cmd("generate", "hello", *common, "-n", str(max_tokens), "--ignore-eos",
                                               "--json"), env)
        out = row(command + f" (bf16, {max_tokens} tokens)", peak, secs, None)
    out["weights_gb"] = weights / 1e9
    out["peak_over_weights"] = out["peak_gb"] * 1e9 / weights
    return out


def measure(shape: str, quant: str, commands: list[str], max_tokens: int, threads: int, home: Path,
            max_model_len: int | None = None) -> list[dict]:
    path = model_path(shape, quant)
    size = path.stat().st_size
    env = {"SPECGUARD_HOME": str(home), "OMP_NUM_THREADS": str(threads)}
    rows = []
    saved = home / f"{shape}-{quant}-response.json"

    from specguard.runtime.gguf_file import read_gguf
    from specguard.runtime.llamacpp import _file_type

    qname = _file_type(read_gguf(path))  # the file's own dominant type (the default model is Q4_1)

    def row(command: str, peak_kb: int, first: float | None, tps: float | None) -> dict:
        return {"shape": shape, "quant": qname, "file_gb": size / 1e9, "command": command, "peak_gb": peak_kb / 1e6,
                "peak_over_file": peak_kb * 1e3 / size, "first_answer_s": first, "tokens_per_s": tps}

    for command in commands:
        if command == "serve-llamacpp":
            limit = ["--max-model-len", str(max_model_len)] if max_model_len else []
            r = serve_once(specguard_cmd("serve", "--model", str(path), "--engine", "llamacpp", "--threads",
                                         str(threads), *limit), env, max_tokens, saved)
            label = command + (f" (--max-model-len {max_model_len})" if max_model_len else " (model's context)")
            rows.append(row(label, int(r["peak_kb"]), r["first_answer_s"], r["tokens_per_s"]))
        elif command in TORCH_COMMANDS:
            rows.append(torch_row(command, path, env, max_tokens, threads, row))
        elif command == "verify-model":
            if not saved.is_file():
                raise SystemExit("verify-model needs serve-llamacpp first (it verifies that response)")
            peak, secs, _ = run_once(specguard_cmd("verify", str(saved), "--model", str(path), "--allow-unpinned"), env)
            rows.append(row(command, peak, secs, None))
        elif command == "digest":
            peak, secs, _ = run_once(specguard_cmd("models", str(path), "--runtime", "llamacpp", "--json"), env)
            rows.append(row(command, peak, secs, None))
        else:
            raise SystemExit(f"unknown command {command!r}")
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _over_weights(r: dict) -> str:
    """Torch rows: peak over the bf16 weights (and those weights in GB); blank for the others."""
    if r.get("peak_over_weights") is None:
        return ""
    return f"{r['peak_over_weights']:.2f} (of {r['weights_gb']:.2f} GB)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1b")
    ap.add_argument("--quant", choices=sorted(QUANTS), default="q4_k")
    ap.add_argument("--commands", default="digest,serve-llamacpp,verify-model")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-model-len", type=int, default=None, help="serve-llamacpp: cap the context (KV cache)")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()
    from specguard.models import model_cache_dir

    rows = []
    with tempfile.TemporaryDirectory(prefix="specguard-scale-") as tmp:
        home = Path(tmp)
        models = model_cache_dir()  # $SPECGUARD_MODEL_CACHE, else $SPECGUARD_HOME/models (with ~ expanded)
        (home / "models").symlink_to(models, target_is_directory=True)  # reuse converted/tokenizer caches
        for shape in args.shapes.split(","):
            rows += measure(shape, args.quant, args.commands.split(","), args.max_tokens, args.threads, home,
                            args.max_model_len)
    if args.no_doc:
        return
    fmt = [[r["shape"], r["quant"], f"{r['file_gb']:.2f}", r["command"], f"{r['peak_gb']:.2f}",
            f"{r['peak_over_file']:.2f}", _over_weights(r),
            "" if r["first_answer_s"] is None else f"{r['first_answer_s']:.1f}",
            "" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.1f}"] for r in rows]
    load = os.getloadavg()[0]
    body = (f"Load average at the end: {load:.1f} on {os.cpu_count()} cores (timings under that load; memory is "
            "what this section is for). Peak RSS is the process's VmHWM (children included).\n\n") + table(["shape", "quant", "file GB", "command", "peak RSS GB", "peak / file", "peak / bf16 weights",
                  "first answer s (or run s)", "tok/s"], fmt)
    limit = f" --max-model-len {args.max_model_len}" if args.max_model_len else ""
    write_section(f"scale-{args.shapes}-{args.quant}{limit.replace(' --max-model-len ', '-ctx')}",
                  f"Real-size runtimes: {args.shapes}{limit} (bench/scale.py)",
                  f"python bench/scale.py --shapes {args.shapes} --quant {args.quant} --commands {args.commands} "
                  f"--threads {args.threads} --max-tokens {args.max_tokens}{limit}", body)


if __name__ == "__main__":
    main()
