"""Honest-noise calibration: the reference against itself under honest serving variations.

Set-ups (each generates greedily, 8 prompts per left-padded batch, or re-scores the reference's
own tokens, then is compared with
the fp32, batch-1 reference re-scoring exactly as a provider's answer would be):
- `fp32-threads`: fp32, one CPU thread instead of the default count;
- `fp32-batch`:   fp32, prompts scored together in batches of 4, left-padded with a mask;
- `fp16`, `bf16`: a half-precision copy generating greedily (skipped when the CPU lacks it);
- `llamacpp-t1`, `llamacpp-t2`, `llamacpp-b8`: another engine. llama.cpp (llama-cpp-python) runs
  the reference's own GGUF greedily (1 or 2 threads; prompt evaluated in batches of 8), with its
  own kernels (quantized weights times 8-bit-quantized activations). Needs a GGUF reference (the
  default model) or `gguf=`; otherwise recorded as an error and left out.
Honest classes name which set-ups the auditor accepts: `fp32` = fp32-threads + fp32-batch
("identical implementation"); `bf16` ("bf16 or better", same engine) = the four torch set-ups;
`cross-engine` = all of them ("the claimed weights on some honest engine"). `auto` (the default of
`audit run`) is `cross-engine`, and needs a calibration with an engine other than torch: an auditor
who does not know the provider's engine must accept every honest engine, so without one `auto` is a
usage error (never a silent torch-only `bf16`, which would accuse an honest llama.cpp or vLLM provider).
The saved JSON (format below) is reusable for audits
of the same reference and can be edited or replaced by the user (`--calibration FILE`). A file
for the default model is committed (`data/`; `specguard audit calibrate --reference smollm2-135m
--n 16 --max-tokens 48 --out core/audit/data/smollm2-135m.calibration.json` recomputes it) and is
used when no other calibration is given and the reference digest matches.

File: {"format": "specguard-audit-calibration/v1", "reference": {"name", "digest"},
"max_tokens", "top_k", "prompts", "setups": {name: {"per_prompt": [mean |delta| per prompt],
"positions", "disagreement_margins": [reference margin at each honest disagreement],
"mean_abs_delta", "error"?}}}
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import SpecguardError
from ..models import LoadedModel, names_model
from . import AuditUsageError
from .rescore import greedy_generate_batch, rescore
from .statistics import prompt_logprob_stat

log = logging.getLogger("specguard.audit.calibrate")
FORMAT = "specguard-audit-calibration/v1"
TORCH_SETUPS = ("fp32-threads", "fp32-batch", "fp16", "bf16")
#: llama.cpp set-ups: name -> (threads, prompt batch size)
LLAMACPP_SETUPS: dict[str, tuple[int, int]] = {"llamacpp-t1": (1, 512), "llamacpp-t2": (2, 512),
                                                "llamacpp-b8": (1, 8)}
SETUPS = TORCH_SETUPS + tuple(LLAMACPP_SETUPS)
HONEST_CLASSES: dict[str, tuple[str, ...]] = {"fp32": ("fp32-threads", "fp32-batch"), "bf16": TORCH_SETUPS,
                                              "cross-engine": SETUPS}
#: what a "consistent" verdict claims under each honest class
CLAIMS: dict[str, str] = {
    "fp32": "identical implementation: the claimed weights served by the reference's own engine in fp32 "
            "(only thread-count and batch-shape noise accepted)",
    "bf16": "the claimed weights on the reference's engine (torch) at bf16 precision or better",
    "cross-engine": "consistent with the claimed weights on some honest engine (torch fp32/fp16/bf16 or llama.cpp); "
                    "not a claim of an identical implementation",
}
CLASS_NAMES = (*HONEST_CLASSES, "auto")
DATA_DIR = Path(__file__).parent / "data"


#: why `auto` refuses a calibration without another engine (the auditor must decide, not a fallback)
AUTO_NEEDS_ENGINE = (
    "the auto honest class needs a calibration with an engine other than torch (llama.cpp on a GGUF of the "
    "reference): without one only torch-only classes remain, and they would call an honest llama.cpp or vLLM "
    "provider substituted. Calibrate with `specguard audit calibrate --reference REF --gguf FILE` and pass "
    "--calibration, or pass --honest-class bf16 (or fp32) if you know the provider runs the reference on torch")


#: why a llama.cpp reference leaves the torch set-ups out of its calibration
NATIVE_TORCH_SETUP = ("not measured: the reference runs on llama.cpp without torch weights "
                      "(audit calibrate, or --reference-runtime torch, measures the torch set-ups)")


def cache_path(reference: LoadedModel) -> Path:
    """Where a calibration measured on first use is cached:
    `$SPECGUARD_HOME/calibrations/<digest>.<runtime>.json` (each runtime measures against itself)."""
    from ..keys import home_dir

    runtime = getattr(reference, "runtime", "torch")
    return home_dir() / "calibrations" / f"{reference.digest.replace(':', '-')}.{runtime}.json"


def has_other_engine(cal: dict[str, Any]) -> bool:
    """Whether the calibration measured an engine other than torch (a llama.cpp set-up)."""
    return any(n in cal.get("setups", {}) and "per_prompt" in cal["setups"][n] for n in LLAMACPP_SETUPS)


def resolve_class(honest_class: str, cal: dict[str, Any]) -> str:
    """`auto` -> `cross-engine`; a calibration without another engine is a usage error, never a torch-only
    fallback (an auditor who does not know the provider's engine must accept every honest engine)."""
    if honest_class != "auto":
        return honest_class
    if not has_other_engine(cal):
        raise AuditUsageError(AUTO_NEEDS_ENGINE, field="honest_class", got="auto (calibration: "
                              f"{sorted(n for n, v in cal.get('setups', {}).items() if 'per_prompt' in v)})",
                              expected=f"a calibration with one of {list(LLAMACPP_SETUPS)}, or an explicit class")
    return "cross-engine"


def committed(reference: LoadedModel) -> Path | None:
    """The committed calibration file for this reference (same digest), if there is one."""
    for path in sorted(DATA_DIR.glob("*.calibration.json")):
        try:
            cal = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(cal, dict) and names_model(reference, cal.get("reference", {}).get("digest")):
            return path
    return None


def _generate(model, prompts: list[list[int]], max_tokens: int, eos: set[int], top_k: int, batch: int = 8):
    out = []
    for i in range(0, len(prompts), batch):
        out.extend(greedy_generate_batch(model, prompts[i : i + batch], max_tokens, eos, top_k))
    return out


def llamacpp_generate(gguf: str | Path, prompts: list[list[int]], max_tokens: int, eos: set[int], top_k: int,
                      n_threads: int = 1, n_batch: int = 512, n_ctx: int = 2048):
    """Greedy (tokens, logprobs, top-k) per prompt from llama.cpp's own logits (no sampler, no penalty)."""
    from ..drafters.llamacpp import llama_cpp_module

    llama_cpp = llama_cpp_module()
    need = max((len(p) for p in prompts), default=0) + max_tokens + 1
    llama = llama_cpp.Llama(model_path=str(gguf), n_ctx=max(n_ctx, need), n_batch=n_batch, n_ubatch=n_batch,
                            n_threads=n_threads, n_threads_batch=n_threads, logits_all=True, verbose=False)
    out = []
    try:
        for prompt in prompts:
            llama.reset()
            llama.eval(list(prompt))
            toks: list[int] = []
            lps: list[float] = []
            tops: list[dict[int, float]] = []
            for _ in range(max_tokens):
                logits = np.asarray(llama.scores[llama.n_tokens - 1], dtype=np.float64)
                logp = logits - logits.max()
                logp = logp - np.log(np.exp(logp).sum())
                tok = int(np.argmax(logits))
                toks.append(tok)
                lps.append(float(logp[tok]))
                best = np.argsort(-logp)[:top_k]
                tops.append({int(t): float(logp[t]) for t in best})
                if tok in eos:
                    break
                llama.eval([tok])
            out.append((toks, lps, tops))
    finally:
        llama.close()
    return out


def _setup_outputs(reference: LoadedModel, name: str, prompts: list[list[int]], max_tokens: int,
                   top_k: int, base: list[tuple[list[int], list[float], list[dict[int, float]]]],
                   gguf: str | Path | None = None):
    """(tokens, logprobs, top-k) per prompt as the honest set-up `name` would serve them."""
    eos = reference.eos_token_ids
    if name in LLAMACPP_SETUPS:
        if gguf is None:
            from ..drafters.llamacpp import target_gguf

            gguf = target_gguf(reference)
        if gguf is None:
            raise RuntimeError("the reference has no GGUF for llama.cpp (calibrate with --gguf FILE)")
        threads, batch = LLAMACPP_SETUPS[name]
        return llamacpp_generate(gguf, prompts, max_tokens, eos, top_k, threads, batch)
    if name == "fp32-threads":
        before = torch.get_num_threads()
        torch.set_num_threads(1 if before > 1 else 2)
        try:
            return _generate(reference.model, prompts, max_tokens, eos, top_k)
        finally:
            torch.set_num_threads(before)
    if name == "fp32-batch":
        items = [(p, out[0], None) for p, out in zip(prompts, base, strict=True)]
        scored = rescore(reference.model, items, top_k=top_k, batch_size=4)
        return [([s.token_id for s in row], [s.logprob for s in row], [dict(s.top) for s in row]) for row in scored]
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[name]
    model = copy.deepcopy(reference.model).to(dtype)
    return _generate(model, prompts, max_tokens, eos, top_k)


def calibrate(reference: LoadedModel, prompts: list[list[int]], max_tokens: int = 32, top_k: int = 5,
              setups: tuple[str, ...] = SETUPS, progress: Any = None, gguf: str | Path | None = None) -> dict[str, Any]:
    """Measure honest noise of every set-up on `prompts` (token ids, chat template applied), each
    against the reference's own runtime (a llama.cpp reference measures the llama.cpp set-ups only)."""
    from .reference import greedy_reference, is_llamacpp, rescore_reference

    native = is_llamacpp(reference)
    base = ([greedy_reference(reference, p, max_tokens, reference.eos_token_ids, top_k) for p in prompts] if native
            else _generate(reference.model, prompts, max_tokens, reference.eos_token_ids, top_k))
    result: dict[str, Any] = {"format": FORMAT, "reference": {"name": reference.name, "digest": reference.digest},
                              "max_tokens": max_tokens, "top_k": top_k, "prompts": len(prompts), "setups": {}}
    for name in setups:
        try:
            if native and name in TORCH_SETUPS:
                raise RuntimeError(NATIVE_TORCH_SETUP)
            outs = _setup_outputs(reference, name, prompts, max_tokens, top_k, base, gguf)
        except (RuntimeError, TypeError, ValueError, SpecguardError) as exc:  # a dtype or engine this box cannot run
            log.warning("calibration set-up %s skipped: %s", name, exc)
            result["setups"][name] = {"error": str(exc)}
            continue
        items = [(p, o[0], [list(t) for t in o[2]]) for p, o in zip(prompts, outs, strict=True)]
        scored = rescore_reference(reference, items, top_k=top_k)
        per_prompt, margins, positions = [], [], 0
        for (_toks, lps, tops), row in zip(outs, scored, strict=True):
            stat, _n, _pairs = prompt_logprob_stat(lps, tops, row)
            if stat == stat:
                per_prompt.append(stat)
            positions += len(row)
            margins.extend(s.margin for s in row if not s.agrees)
        result["setups"][name] = {"per_prompt": per_prompt, "positions": positions,
                                  "disagreement_margins": margins, "disagreements": len(margins),
                                  "mean_abs_delta": float(np.mean(per_prompt)) if per_prompt else 0.0}
        if progress:
            progress(name)
    return result


def first_use(reference: LoadedModel, prompts: list[list[int]], max_tokens: int, top_k: int,
              setups: tuple[str, ...], cache: bool = True) -> dict[str, Any]:
    """The calibration of a reference without a committed one: the one cached under
    `cache_path(reference)` (same model digest), else measured now (progress and its cost on
    stderr) and cached there when `cache` (a measurement of every set-up the class needs)."""
    path = cache_path(reference)
    if cache and path.is_file():
        try:
            cal = load(path, reference)
            print(f"specguard: calibration of {reference.name} from {path}", file=sys.stderr)
            return cal
        except AuditUsageError as exc:
            log.warning("cached calibration %s unusable (%s): measuring again", path, exc.summary())
    print(f"specguard: calibrating the honest noise of {reference.name} (first use, digest {reference.digest[:19]}): "
          f"{len(prompts)} prompts x {max_tokens} tokens on {len(setups)} set-ups ...", file=sys.stderr)
    start = time.monotonic()

    def progress(name: str) -> None:
        print(f"specguard:   set-up {name} measured ({time.monotonic() - start:.1f}s)", file=sys.stderr)

    cal = calibrate(reference, prompts, max_tokens, top_k, setups, progress=progress)
    cal["cost"] = {"seconds": round(time.monotonic() - start, 2), "prompts": len(prompts), "max_tokens": max_tokens}
    if cache:
        save(cal, path)
    print(f"specguard: calibration done in {cal['cost']['seconds']:.1f}s"
          + (f", cached at {path}" if cache else ""), file=sys.stderr)
    return cal


def save(cal: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cal, indent=1))


def load(path: Path, reference: LoadedModel | None = None) -> dict[str, Any]:
    """Read a calibration file; it must name the same reference digest when a reference is given."""
    try:
        cal = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AuditUsageError("cannot read calibration file", field="calibration", got=f"{path}: {exc}") from exc
    if not isinstance(cal, dict) or cal.get("format") != FORMAT or not isinstance(cal.get("setups"), dict):
        raise AuditUsageError("not a calibration file", field="format", got=cal.get("format") if isinstance(cal, dict) else None,
                              expected=FORMAT)
    if reference is not None and not names_model(reference, cal.get("reference", {}).get("digest")):
        raise AuditUsageError("calibration was measured on another model", field="reference.digest",
                              got=cal.get("reference", {}).get("digest"), expected=reference.digest)
    return cal


def honest_null(cal: dict[str, Any], honest_class: str | list[str], margin: float = 1.5,
                tau_floor: float = 1e-3) -> dict[str, Any]:
    """The null for a declared honest class: logprob pool (worst set-up x margin), near-tie
    threshold tau (margin x largest honest disagreement margin) and the honest hard-disagreement
    rate p0 (upper ~95% bound: (k + 3) / (n + 1))."""
    if isinstance(honest_class, str):
        honest_class = resolve_class(honest_class, cal)
    names = HONEST_CLASSES.get(honest_class, ()) if isinstance(honest_class, str) else tuple(honest_class)
    if not names:
        raise AuditUsageError("unknown honest class", field="honest_class", got=honest_class,
                              expected=list(CLASS_NAMES))
    usable = {n: cal["setups"][n] for n in names if n in cal["setups"] and "per_prompt" in cal["setups"][n]}
    if not usable:
        raise AuditUsageError("calibration has none of the honest class's set-ups", field="setups",
                              got=list(cal["setups"]), expected=list(names))
    if honest_class == "cross-engine" and not any(n in LLAMACPP_SETUPS for n in usable):
        raise AuditUsageError("the cross-engine class needs an engine other than torch in the calibration "
                              "(calibrate with llama.cpp on a GGUF of the reference)", field="setups",
                              got=list(usable), expected=list(LLAMACPP_SETUPS))
    worst = max(usable, key=lambda n: usable[n]["mean_abs_delta"])
    pool = [v * margin for v in usable[worst]["per_prompt"]] or [0.0]
    all_margins = [m for s in usable.values() for m in s["disagreement_margins"]]
    tau = max(tau_floor, margin * max(all_margins, default=0.0))
    # set-ups that gave bit-identical answers (llama.cpp across thread counts) are one sample, not several
    distinct = {json.dumps(s["per_prompt"]): s for s in usable.values()}
    positions = sum(s["positions"] for s in distinct.values())
    hard = sum(1 for s in usable.values() for m in s["disagreement_margins"] if m >= tau)
    p0 = min(0.5, (hard + 3) / (positions + 1))
    missing = [n for n in names if n not in usable]
    return {"class": honest_class if isinstance(honest_class, str) else "custom",
            "claim": CLAIMS.get(honest_class, "consistent with the listed honest set-ups")
            if isinstance(honest_class, str) else "consistent with the listed honest set-ups",
            "missing_setups": missing, "setups": list(usable), "worst_setup": worst, "pool": pool, "tau": tau, "p0": p0, "margin": margin,
            "mean_abs_delta": {n: s["mean_abs_delta"] for n, s in usable.items()}}
