"""Measure how far honest re-derivations drift, to set the near-tie margin and logprob tolerance.

An honest node and a verifier run the same model and the same arithmetic in a different shape:
the node decodes with a KV cache, in verification steps of 1..k+1 rows (depending on the
drafter), with its own thread count; the verifier scores the whole output in one prefill. Those
shapes round differently (PITFALLS.md: ~1e-6 in fp32 logprobs), which can flip exact near-ties.

`calibrate` generates honest transcripts under several conditions (torch thread counts,
drafters that change the verification batch shape, greedy and seeded sampling), re-scores each
with `specguard.engine.scoring.score` under each thread count, and reports

- `max_logprob_error`: the largest |claimed - recomputed| log-probability,
- `max_tie_gap`: the largest decision-score gap at a position where the re-derived choice
  differs from the emitted token (0 when no position flipped),
- `max_score_drift` for a reduced-precision (bfloat16) verifier, to show why verifiers must run
  the target's own dtype (its drift is orders of magnitude above the fp32 one).

The defaults in `rederive` (DEFAULT_MARGIN, DEFAULT_LOGPROB_TOLERANCE) are set well above the
fp32 maxima measured here (numbers in docs/consensus.md; rerun with `specguard consensus calibrate`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..models import LoadedModel
from ..transcript import SamplingParams, Transcript


@dataclass
class Drift:
    """Worst-case drift of one condition."""

    condition: str
    transcripts: int = 0
    tokens: int = 0
    flipped: int = 0
    max_logprob_error: float = 0.0
    max_tie_gap: float = 0.0

    def add(self, transcript: Transcript, rescored: Any) -> None:
        self.transcripts += 1
        for rec, pos in zip(transcript.tokens, rescored.positions, strict=True):
            self.tokens += 1
            self.max_logprob_error = max(self.max_logprob_error, abs(rec.logprob - pos.logprob))
            if not pos.agrees:
                self.flipped += 1
                self.max_tie_gap = max(self.max_tie_gap, pos.given_score_gap)

    def to_json(self) -> dict[str, Any]:
        return {"condition": self.condition, "transcripts": self.transcripts, "tokens": self.tokens,
                "flipped": self.flipped, "max_logprob_error": self.max_logprob_error,
                "max_tie_gap": self.max_tie_gap}


@dataclass
class CalibrationReport:
    """Drift per condition and the overall fp32 maxima the defaults must exceed."""

    conditions: list[Drift] = field(default_factory=list)
    reduced_precision: list[Drift] = field(default_factory=list)

    @property
    def max_logprob_error(self) -> float:
        return max((d.max_logprob_error for d in self.conditions), default=0.0)

    @property
    def max_tie_gap(self) -> float:
        return max((d.max_tie_gap for d in self.conditions), default=0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "max_logprob_error": self.max_logprob_error,
            "max_tie_gap": self.max_tie_gap,
            "conditions": [d.to_json() for d in self.conditions],
            "reduced_precision": [d.to_json() for d in self.reduced_precision],
        }


def _generate(model: LoadedModel, prompt: list[int], params: SamplingParams, drafter: str) -> Transcript:
    from ..engine.factory import make_drafter
    from ..engine.speculative import SpeculativeEngine

    engine = SpeculativeEngine(model, make_drafter(drafter, model, {}), top_logprobs=0)
    return engine.generate(prompt, params)


def calibrate(
    model: LoadedModel,
    prompts: list[list[int]],
    max_tokens: int = 32,
    threads: tuple[int, ...] = (1, 2),
    drafters: tuple[str, ...] = ("none", "ngram"),
    seeds: tuple[int | None, ...] = (None, 7),
    bfloat16: bool = True,
) -> CalibrationReport:
    """Generate honest transcripts under each condition and measure re-scoring drift.

    `seeds`: None means greedy; an integer means seeded Gumbel sampling at temperature 0.8.
    """
    from ..engine.scoring import score

    report = CalibrationReport()
    saved_threads = torch.get_num_threads()
    low = None
    if bfloat16:
        low = copy.deepcopy(model)
        low.model = copy.deepcopy(model.model).to(torch.bfloat16)
    try:
        for seed in seeds:
            params = SamplingParams(max_tokens=max_tokens, temperature=0.0 if seed is None else 0.8, seed=seed)
            mode = "greedy" if seed is None else "sampled"
            for gen_threads in threads:
                for drafter in drafters:
                    torch.set_num_threads(gen_threads)
                    transcripts = [_generate(model, p, params, drafter) for p in prompts]
                    for score_threads in threads:
                        torch.set_num_threads(score_threads)
                        drift = Drift(f"{mode} gen threads={gen_threads} drafter={drafter} "
                                      f"score threads={score_threads} fp32")
                        for t in transcripts:
                            drift.add(t, score(model, t.prompt_ids, t.output_ids, t.params, top_k=0))
                        report.conditions.append(drift)
                    if low is not None and gen_threads == threads[0]:
                        drift = Drift(f"{mode} drafter={drafter} score bf16 (first prompt)")
                        for t in transcripts[:1]:  # bf16 matmuls are slow on CPUs without bf16 units
                            drift.add(t, score(low, t.prompt_ids, t.output_ids, t.params, top_k=0))
                        report.reduced_precision.append(drift)
    finally:
        torch.set_num_threads(saved_threads)
    return report


def recommended(report: CalibrationReport, factor: float = 10.0) -> dict[str, float]:
    """Margin and tolerance `factor` times the worst honest fp32 drift (never below 1e-4 / 1e-5)."""
    margin = max(report.max_tie_gap * factor, 1e-4)
    tol = max(report.max_logprob_error * factor, 1e-5)
    return {"margin": float(f"{margin:.1g}") if math.isfinite(margin) else margin,
            "logprob_tolerance": float(f"{tol:.1g}") if math.isfinite(tol) else tol}


# --- cross-engine calibration ----------------------------------------------------------------------
#
# Another engine (llama.cpp on the Q4_1 GGUF of the same model, ...) computes logits with other
# kernels, so its greedy choices differ from the fp32 torch model's at near-ties. A verifier that
# re-checks such transcripts must tolerate those near-ties, and only those: `cross_engine_calibrate`
# measures, on honest runs of the other engine, the decision-score gap at every position where the
# torch model would have chosen another token, how many such positions one response has, and how
# far the engine's log-probabilities are from torch's. `recommended_cross_engine` turns that into a
# [consensus.engines.NAME] table; `freedom` says what that margin lets a dishonest engine do.

#: `generate(prompt_ids, max_tokens)` -> the engine's greedy output ids, or (ids, per-token
#: log-probabilities of those ids). Any engine plugs in (llama.cpp directly, an Engine adapter, ...).
GreedyIds = Callable[[list[int], int], "list[int] | tuple[list[int], list[float]]"]


@dataclass
class CrossEngineReport:
    """Honest cross-engine drift: where the other engine's greedy tokens are not torch's choice."""

    engine: str
    model_digest: str
    responses: int = 0
    tokens: int = 0
    disagreements: int = 0
    gaps: list[float] = field(default_factory=list)  # score gap at each disagreement
    per_response: list[tuple[int, int]] = field(default_factory=list)  # (disagreements, tokens)
    max_logprob_error: float | None = None  # None when the engine gave no logprobs

    @property
    def max_gap(self) -> float:
        return max(self.gaps, default=0.0)

    @property
    def max_fraction(self) -> float:
        return max((d / n for d, n in self.per_response if n), default=0.0)

    @property
    def max_count(self) -> int:
        return max((d for d, _ in self.per_response), default=0)

    def quantiles(self) -> dict[str, float]:
        """Gap distribution at disagreements (p50, p90, p99, max)."""
        if not self.gaps:
            return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
        g = sorted(self.gaps)

        def q(p: float) -> float:
            return g[min(len(g) - 1, int(math.ceil(p * len(g))) - 1)]

        return {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": g[-1]}

    def to_json(self) -> dict[str, Any]:
        return {
            "engine": self.engine, "model_digest": self.model_digest, "responses": self.responses,
            "tokens": self.tokens, "disagreements": self.disagreements,
            "agreement": 1 - self.disagreements / self.tokens if self.tokens else 1.0,
            "gap_quantiles": self.quantiles(), "max_fraction_per_response": self.max_fraction,
            "max_disagreements_per_response": self.max_count, "max_logprob_error": self.max_logprob_error,
            "gaps": [round(x, 6) for x in self.gaps], "per_response": [list(p) for p in self.per_response],
        }


def cross_engine_calibrate(
    model: LoadedModel, generate: GreedyIds, prompts: list[list[int]], max_tokens: int = 32, engine: str = "other",
) -> CrossEngineReport:
    """Run `generate` (the other engine, greedy) on each prompt and score its output with `model`."""
    from ..engine.scoring import score

    report = CrossEngineReport(engine=engine, model_digest=model.digest)
    for prompt in prompts:
        got = generate(list(prompt), max_tokens)
        ids, logprobs = (got if isinstance(got, tuple) else (got, None))
        ids = [int(t) for t in ids]
        if not ids:
            continue
        rescored = score(model, prompt, ids, SamplingParams(max_tokens=max(1, len(ids))), top_k=0)
        flips = [p for p in rescored.positions if not p.agrees]
        report.responses += 1
        report.tokens += len(ids)
        report.disagreements += len(flips)
        report.gaps.extend(p.given_score_gap for p in flips)
        report.per_response.append((len(flips), len(ids)))
        if logprobs is not None:
            err = max(abs(a - p.logprob) for a, p in zip(logprobs, rescored.positions, strict=True))
            report.max_logprob_error = max(report.max_logprob_error or 0.0, err)
    return report


def recommended_cross_engine(report: CrossEngineReport, factor: float = 1.5) -> dict[str, Any]:
    """A [consensus.engines.NAME] table from honest drift: `factor` times the worst gap, fraction
    and logprob error measured (rounded up to 2 significant digits), never below the exact defaults."""
    from .rederive import DEFAULT_LOGPROB_TOLERANCE, DEFAULT_MARGIN

    def up(x: float) -> float:
        if x <= 0:
            return 0.0
        digits = 1 - int(math.floor(math.log10(x)))
        return math.ceil(x * 10**digits) / 10**digits

    table: dict[str, Any] = {
        "margin": min(1.0, max(DEFAULT_MARGIN, up(report.max_gap * factor))),
        "max_near_tie_fraction": min(1.0, max(0.01, up(report.max_fraction * factor))),
    }
    if report.max_logprob_error is not None:
        table["logprob_tolerance"] = min(1.0, max(DEFAULT_LOGPROB_TOLERANCE, up(report.max_logprob_error * factor)))
    return table


@dataclass
class Freedom:
    """What a margin lets a dishonest engine do on honest contexts: at what fraction of positions
    some token other than torch's choice lies within the margin, and how many such tokens."""

    margin: float
    positions: int = 0
    with_alternative: int = 0
    alternatives: int = 0
    saturated: int = 0  # positions where every inspected alternative was within the margin

    def to_json(self) -> dict[str, Any]:
        return {"margin": self.margin, "positions": self.positions,
                "fraction_with_alternative": self.with_alternative / self.positions if self.positions else 0.0,
                "mean_alternatives": self.alternatives / self.positions if self.positions else 0.0,
                "mean_alternatives_where_any": self.alternatives / self.with_alternative if self.with_alternative
                else 0.0, "saturated_positions": self.saturated}


def freedom(model: LoadedModel, sequences: list[tuple[list[int], list[int]]], margins: list[float],
            inspect: int = 64) -> list[Freedom]:
    """For each margin: over every (prompt, output) position, the tokens v != argmax with
    logit[argmax] - logit[v] <= margin (greedy decision scores), counted among the top `inspect`."""
    from ..engine.scoring import score

    out = [Freedom(m) for m in margins]
    for prompt, ids in sequences:
        if not ids:
            continue
        rescored = score(model, prompt, ids, SamplingParams(max_tokens=max(1, len(ids))), top_k=inspect)
        for pos in rescored.positions:
            best = pos.top[0][1]
            gaps = [best - lp for _, lp in pos.top[1:]]
            for f in out:
                n = sum(1 for g in gaps if g <= f.margin)
                f.positions += 1
                f.with_alternative += n > 0
                f.alternatives += n
                f.saturated += n == len(gaps)
    return out


def llamacpp_greedy(gguf: str, n_threads: int = 1, n_ctx: int = 2048) -> GreedyIds:
    """Greedy generation with llama.cpp directly (llama-cpp-python), for `cross_engine_calibrate`:
    argmax of llama.cpp's logits at each step (lowest id on ties), no repeat penalty, no EOS stop
    (the calibration wants every position), with the log-probabilities of the chosen tokens."""
    import numpy as np

    from ..drafters.llamacpp import llama_cpp_module

    llama_cpp = llama_cpp_module()
    llama = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=min(512, n_ctx), n_threads=n_threads,
                            n_threads_batch=n_threads, logits_all=False, verbose=False)
    vocab = int(llama.n_vocab())

    def generate(prompt: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
        llama.reset()
        pending = list(prompt)
        ids: list[int] = []
        logprobs: list[float] = []
        for _ in range(max_tokens):
            llama.eval(pending)
            logits = np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(vocab,)).astype(np.float64)
            token = int(np.argmax(logits))
            shifted = logits - logits.max()
            logprobs.append(float(shifted[token] - np.log(np.exp(shifted).sum())))
            ids.append(token)
            pending = [token]
        return ids, logprobs

    return generate
