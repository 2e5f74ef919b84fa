"""Honest-noise calibration: the reference against itself under honest serving variations.

Set-ups (each generates greedily, 8 prompts per left-padded batch, or re-scores the reference's
own tokens, then is compared with
the fp32, batch-1 reference re-scoring exactly as a provider's answer would be):
- `fp32-threads`: fp32, one CPU thread instead of the default count;
- `fp32-batch`:   fp32, prompts scored together in batches of 4, left-padded with a mask;
- `fp16`, `bf16`: a half-precision copy generating greedily (skipped when the CPU lacks it).
Honest classes name which set-ups the auditor accepts: `fp32` = fp32-threads + fp32-batch;
`bf16` ("bf16 or better") = all four. The saved JSON (format below) is reusable for audits
of the same reference and can be edited or replaced by the user (`--calibration FILE`).

File: {"format": "specguard-audit-calibration/v1", "reference": {"name", "digest"},
"max_tokens", "top_k", "prompts", "setups": {name: {"per_prompt": [mean |delta| per prompt],
"positions", "disagreement_margins": [reference margin at each honest disagreement],
"mean_abs_delta", "error"?}}}
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models import LoadedModel
from . import AuditUsageError
from .rescore import greedy_generate_batch, rescore
from .statistics import prompt_logprob_stat

log = logging.getLogger("specguard.audit.calibrate")
FORMAT = "specguard-audit-calibration/v1"
SETUPS = ("fp32-threads", "fp32-batch", "fp16", "bf16")
HONEST_CLASSES: dict[str, tuple[str, ...]] = {"fp32": ("fp32-threads", "fp32-batch"), "bf16": SETUPS}


def _generate(model, prompts: list[list[int]], max_tokens: int, eos: set[int], top_k: int, batch: int = 8):
    out = []
    for i in range(0, len(prompts), batch):
        out.extend(greedy_generate_batch(model, prompts[i : i + batch], max_tokens, eos, top_k))
    return out


def _setup_outputs(reference: LoadedModel, name: str, prompts: list[list[int]], max_tokens: int,
                   top_k: int, base: list[tuple[list[int], list[float], list[dict[int, float]]]]):
    """(tokens, logprobs, top-k) per prompt as the honest set-up `name` would serve them."""
    eos = reference.eos_token_ids
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
              setups: tuple[str, ...] = SETUPS, progress: Any = None) -> dict[str, Any]:
    """Measure honest noise of every set-up on `prompts` (token ids, chat template applied)."""
    base = _generate(reference.model, prompts, max_tokens, reference.eos_token_ids, top_k)
    result: dict[str, Any] = {"format": FORMAT, "reference": {"name": reference.name, "digest": reference.digest},
                              "max_tokens": max_tokens, "top_k": top_k, "prompts": len(prompts), "setups": {}}
    for name in setups:
        try:
            outs = _setup_outputs(reference, name, prompts, max_tokens, top_k, base)
        except (RuntimeError, TypeError) as exc:  # a dtype this CPU build cannot run
            log.warning("calibration set-up %s skipped: %s", name, exc)
            result["setups"][name] = {"error": str(exc)}
            continue
        items = [(p, o[0], [list(t) for t in o[2]]) for p, o in zip(prompts, outs, strict=True)]
        scored = rescore(reference.model, items, top_k=top_k)
        per_prompt, margins, positions = [], [], 0
        for (_toks, lps, tops), row in zip(outs, scored, strict=True):
            stat, _n, _pairs = prompt_logprob_stat(lps, tops, row)
            if stat == stat:
                per_prompt.append(stat)
            positions += len(row)
            margins.extend(s.margin for s in row if not s.agrees)
        result["setups"][name] = {"per_prompt": per_prompt, "positions": positions,
                                  "disagreement_margins": margins,
                                  "mean_abs_delta": float(np.mean(per_prompt)) if per_prompt else 0.0}
        if progress:
            progress(name)
    return result


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
    if reference is not None and cal.get("reference", {}).get("digest") != reference.digest:
        raise AuditUsageError("calibration was measured on another model", field="reference.digest",
                              got=cal.get("reference", {}).get("digest"), expected=reference.digest)
    return cal


def honest_null(cal: dict[str, Any], honest_class: str | list[str], margin: float = 1.5,
                tau_floor: float = 1e-3) -> dict[str, Any]:
    """The null for a declared honest class: logprob pool (worst set-up x margin), near-tie
    threshold tau (margin x largest honest disagreement margin) and the honest hard-disagreement
    rate p0 (upper ~95% bound: (k + 3) / (n + 1))."""
    names = HONEST_CLASSES.get(honest_class, ()) if isinstance(honest_class, str) else tuple(honest_class)
    if not names:
        raise AuditUsageError("unknown honest class", field="honest_class", got=honest_class,
                              expected=list(HONEST_CLASSES))
    usable = {n: cal["setups"][n] for n in names if n in cal["setups"] and "per_prompt" in cal["setups"][n]}
    if not usable:
        raise AuditUsageError("calibration has none of the honest class's set-ups", field="setups",
                              got=list(cal["setups"]), expected=list(names))
    worst = max(usable, key=lambda n: usable[n]["mean_abs_delta"])
    pool = [v * margin for v in usable[worst]["per_prompt"]] or [0.0]
    all_margins = [m for s in usable.values() for m in s["disagreement_margins"]]
    tau = max(tau_floor, margin * max(all_margins, default=0.0))
    positions = sum(s["positions"] for s in usable.values())
    hard = sum(1 for s in usable.values() for m in s["disagreement_margins"] if m >= tau)
    p0 = min(0.5, (hard + 3) / (positions + 1))
    return {"setups": list(usable), "worst_setup": worst, "pool": pool, "tau": tau, "p0": p0, "margin": margin,
            "mean_abs_delta": {n: s["mean_abs_delta"] for n, s in usable.items()}}
