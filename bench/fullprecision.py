"""Full-precision weights in llama.cpp: is its forward over k draft tokens close to one token's cost?

Issue 23's moonshot asks for verified full-precision output at the speed of llama.cpp's Q4_1 plain
decoding. The verifier forward is ~90% of the time with draft-ahead on, so the question is what a
verification forward of k rows costs on each candidate target runtime:

- torch fp32 (today's target): the dequantized weights of the default model's Q4_1 GGUF;
- llama.cpp on an F32 GGUF holding **the same dequantized weights** (converted once here, from the
  Q4_1 GGUF with the `gguf` package: every tensor dequantized to float32, metadata copied; the file's
  SHA-256 is what a receipt would name), and on the Q4_1 GGUF itself for reference.

For each runtime: plain greedy decoding tokens/s (one token per forward), and the time of one forward
of N new tokens over the prompt's cache (a chat prompt cut to at most 300 tokens; N = 1, 4, 8, 16, 32), median of `--repeat`. Writes section
`fullprecision` of docs/benchmarks.md (unless --no-doc).

    python bench/fullprecision.py [--threads 1] [--tokens 32] [--repeat 5]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _report import table, write_section  # noqa: E402

from specguard.engine import kv  # noqa: E402
from specguard.models import load_model, resolve  # noqa: E402

ROWS = (1, 4, 8, 16, 32)


def convert_to_f32(src: Path, dst: Path) -> Path:
    """An F32 GGUF with `src`'s tensors dequantized and its metadata copied (written once)."""
    import gguf

    if dst.is_file():
        return dst
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    tmp = dst.with_suffix(".part")
    writer = gguf.GGUFWriter(str(tmp), arch)
    for name, fld in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value = fld.contents()
        if name == "general.file_type":
            value = int(gguf.LlamaFileType.ALL_F32)
        sub = fld.types[-1] if fld.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, value, fld.types[0], sub_type=sub)
    for tensor in reader.tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        writer.add_tensor(tensor.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(dst)
    return dst


def llama_rows(llama, prompt: list[int], rows: int, repeat: int) -> float:
    """Median ms of one llama.cpp decode of `rows` new tokens after `prompt`."""
    times = []
    for _ in range(repeat):
        llama.reset()
        llama.eval(prompt)
        t0 = time.perf_counter()
        llama.eval(prompt[1: rows + 1] if rows > 1 else [prompt[1]])
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def llama_decode_tps(llama, prompt: list[int], tokens: int) -> float:
    vocab = int(llama.n_vocab())
    llama.reset()
    llama.eval(prompt)
    t0 = time.perf_counter()
    for _ in range(tokens):
        logits = np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(vocab,))
        llama.eval([int(np.argmax(logits))])
    return tokens / (time.perf_counter() - t0)


@torch.inference_mode()
def torch_rows(model, prompt: list[int], rows: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        cache = kv.new_cache(model)
        kv.forward(model, prompt, cache, 1)
        t0 = time.perf_counter()
        kv.forward(model, prompt[1: rows + 1], cache, rows)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


@torch.inference_mode()
def torch_decode_tps(model, prompt: list[int], tokens: int) -> float:
    cache = kv.new_cache(model)
    logits = kv.forward(model, prompt, cache, 1)
    t0 = time.perf_counter()
    for _ in range(tokens):
        logits = kv.forward(model, [int(torch.argmax(logits[-1]))], cache, 1)
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch and llama.cpp threads")
    ap.add_argument("--tokens", type=int, default=32, help="tokens of plain greedy decoding per runtime")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "specguard" / "gguf-f32"))
    ap.add_argument("--note", default="", help="a sentence for the report (e.g. the machine's load)")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from specguard.llamacpp_runtime import llama_cpp_module

    llama_cpp = llama_cpp_module()
    target = load_model()
    _, q4 = resolve(None)
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    f32 = convert_to_f32(Path(q4), cache / (Path(q4).stem + ".F32-dequantized.gguf"))
    convert_s = time.perf_counter() - t0
    digest = hashlib.sha256(f32.read_bytes()).hexdigest()
    prompt = target.encode_chat([{"role": "user", "content": "Explain what a hash function is, with an example. " * 6}])
    prompt = prompt[:300]
    runtimes = {}
    for label, path in (("llama.cpp F32 GGUF (dequantized Q4_1)", f32), ("llama.cpp Q4_1 GGUF", Path(q4))):
        llama = llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_batch=512, n_threads=args.threads,
                                n_threads_batch=args.threads, verbose=False)
        llama_rows(llama, prompt, 4, 1)  # warm up
        runtimes[label] = ([llama_rows(llama, prompt, n, args.repeat) for n in ROWS],
                           llama_decode_tps(llama, prompt, args.tokens))
        llama.close()
    torch_rows(target.model, prompt, 4, 1)
    runtimes["torch fp32 (today's target)"] = ([torch_rows(target.model, prompt, n, args.repeat) for n in ROWS],
                                               torch_decode_tps(target.model, prompt, args.tokens))
    rows = []
    for label, (ms, tps) in runtimes.items():
        rows.append([label, f"{tps:.1f}", *(f"{m:.1f}" for m in ms), f"{ms[ROWS.index(16)] / ms[0]:.2f}x"])
    body = (
        f"Default model (SmolLM2-135M), {args.threads} thread(s) for torch and llama.cpp; plain greedy decoding of "
        f"{args.tokens} tokens after a {len(prompt)}-token prompt; one forward of N new tokens over the prompt's "
        f"cache, median of {args.repeat}. The F32 GGUF holds the dequantized Q4_1 weights — the same numbers torch "
        f"runs — converted in {convert_s:.1f} s (sha256:{digest[:16]}…, {f32.stat().st_size / 1e6:.0f} MB).\n\n"
        + table(["runtime", "plain tok/s", *(f"forward N={n} ms" for n in ROWS), "N=16 vs N=1"], rows)
        + "\n" + (f"\n{args.note}\n" if args.note else "")
    )
    print(body)
    if not args.no_doc:
        write_section("fullprecision", "Full-precision weights as the target: verification forward cost by runtime",
                      "python bench/fullprecision.py " + " ".join(sys.argv[1:]), body)


if __name__ == "__main__":
    main()
