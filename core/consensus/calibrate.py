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
