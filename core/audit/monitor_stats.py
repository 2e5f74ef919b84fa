"""Reference-free change detection for `specguard audit monitor` (Log-Prob Tracking style).

A *run* is one answer to one prompt, reduced to a fingerprint: the answer text and, when the
provider returned logprobs, per position the chosen token and its top-k logprobs. Two runs of the
same prompt have a distance (`run_distance`): with logprobs, the mean over positions of the mean
|Δlogprob| over the union of both top-k lists (each difference shrunk by `tol`), where a
decisive divergence of the chosen tokens costs `DIVERGED` per remaining position and a
near-tie divergence (margin <= tol on either side) ends the comparison without cost; without
logprobs, the character 3-gram Jaccard distance of the two texts.

The test (`change_test`) asks whether the check's runs are exchangeable with the baseline's
repeats. Per prompt, the statistic of a labelling is mean distance(check, baseline) minus mean
distance(baseline, baseline); its exact permutation p-value is its rank among all labellings of
the R + C runs (so the provider's own run-to-run noise, measured by the repeats, is the null).
Prompts are combined by Fisher's statistic, whose null is the joint distribution of the
per-prompt ranks under independent uniform labellings (Monte Carlo, seeded). Under the null
(same model, same noise) the false-alarm rate is at most alpha, with ties counted against
rejection.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

#: cost per position after a decisive divergence of the greedy tokens (nats-like units)
DIVERGED = 1.0
#: labellings enumerated per prompt before sampling them instead
MAX_LABELLINGS = 5000
SAMPLED_LABELLINGS = 2000


@dataclass(frozen=True)
class Position:
    """One answer position: the chosen token's key and logprob, and the top-k alternatives."""

    token: str
    logprob: float
    top: dict[str, float]

    def logprobs(self) -> dict[str, float]:
        out = dict(self.top)
        out[self.token] = self.logprob
        return out


@dataclass(frozen=True)
class Run:
    """One answer's fingerprint; `positions` is None when the provider returned no logprobs."""

    content: str
    positions: tuple[Position, ...] | None

    def to_json(self) -> dict[str, Any]:
        pos = None if self.positions is None else [
            {"t": p.token, "lp": p.logprob, "top": dict(sorted(p.top.items()))} for p in self.positions]
        return {"content": self.content, "positions": pos}

    @staticmethod
    def from_json(obj: Any) -> Run:
        from ..errors import ParseError

        if not isinstance(obj, dict) or not isinstance(obj.get("content"), str):
            raise ParseError("run is not an object with a content string", field="run", got=repr(obj)[:80])
        raw = obj.get("positions")
        if raw is None:
            return Run(obj["content"], None)
        try:
            positions = tuple(Position(str(p["t"]), float(p["lp"]), {str(k): float(v) for k, v in p["top"].items()})
                              for p in raw)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ParseError("run positions are malformed", field="run.positions", got=repr(raw)[:80]) from exc
        return Run(obj["content"], positions)


def token_key(entry: dict[str, Any]) -> str:
    """A provider token's identity without a tokenizer: its bytes (hex) when given, else its text."""
    raw = entry.get("bytes")
    return "x" + bytes(raw).hex() if isinstance(raw, list) else "s" + str(entry.get("token"))


def run_from_answer(content: str, entries: list[dict[str, Any]] | None) -> Run:
    """A fingerprint from a validated answer (`specguard.audit.client.validate_answer` output)."""
    if entries is None:
        return Run(content, None)
    positions = []
    for e in entries:
        top: dict[str, float] = {}
        for alt in e.get("top_logprobs") or []:
            top.setdefault(token_key(alt), float(alt["logprob"]))
        positions.append(Position(token_key(e), float(e["logprob"]), top))
    return Run(content, tuple(positions))


def _near_tie(a: Position, b: Position, tol: float) -> bool:
    la, lb = a.logprobs(), b.logprobs()
    margin_a = la[a.token] - la[b.token] if b.token in la else math.inf
    margin_b = lb[b.token] - lb[a.token] if a.token in lb else math.inf
    return min(margin_a, margin_b) <= tol


def _position_delta(a: Position, b: Position, tol: float) -> float:
    la, lb = a.logprobs(), b.logprobs()
    floor_a, floor_b = min(la.values()), min(lb.values())  # a token missing from a top-k is at most its floor
    keys = set(la) | set(lb)
    return sum(max(0.0, abs(la.get(k, floor_a) - lb.get(k, floor_b)) - tol) for k in keys) / len(keys)


def logprob_distance(a: tuple[Position, ...], b: tuple[Position, ...], tol: float) -> float:
    """Mean per-position logprob distance; see the module docstring for divergences."""
    n = max(len(a), len(b))
    if n == 0:
        return 0.0
    total, count = 0.0, 0
    for i in range(min(len(a), len(b))):
        if a[i].token != b[i].token:
            if _near_tie(a[i], b[i], tol):
                return total / count if count else 0.0
            rest = n - i
            return (total + DIVERGED * rest) / (count + rest)
        total += _position_delta(a[i], b[i], tol)
        count += 1
    rest = n - count  # one answer stopped earlier than the other
    return (total + DIVERGED * rest) / (count + rest)


def _grams(text: str, n: int = 3) -> Counter[str]:
    padded = f"\x02{text}\x03"
    return Counter(padded[i:i + n] for i in range(max(1, len(padded) - n + 1)))


def text_distance(a: str, b: str) -> float:
    """1 - weighted Jaccard similarity of the character 3-gram multisets (0 for equal texts)."""
    if a == b:
        return 0.0
    ga, gb = _grams(a), _grams(b)
    inter = sum((ga & gb).values())
    union = sum((ga | gb).values())
    return 1.0 - inter / union if union else 0.0


def run_distance(a: Run, b: Run, tol: float, mode: str) -> float:
    if mode == "logprobs" and a.positions is not None and b.positions is not None:
        return logprob_distance(a.positions, b.positions, tol)
    return text_distance(a.content, b.content)


@dataclass
class PromptTest:
    """Per-prompt outcome: the observed statistic, its exact permutation p-value and the null's p-values."""

    mode: str
    statistic: float
    p_value: float
    cross: float
    within: float
    null_p: np.ndarray  # p-value of every labelling (uniform under the null)


def _labellings(total: int, c: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    observed = tuple(range(total - c, total))
    if math.comb(total, c) <= MAX_LABELLINGS:
        return list(itertools.combinations(range(total), c))
    sampled = [tuple(sorted(rng.choice(total, size=c, replace=False).tolist())) for _ in range(SAMPLED_LABELLINGS - 1)]
    return [observed, *sampled]


def _stat(dist: np.ndarray, check: tuple[int, ...]) -> tuple[float, float, float]:
    mask = np.zeros(len(dist), dtype=bool)
    mask[list(check)] = True
    cross = float(dist[np.ix_(mask, ~mask)].mean())
    base = dist[np.ix_(~mask, ~mask)]
    nb = int((~mask).sum())
    within = float((base.sum()) / (nb * (nb - 1))) if nb > 1 else 0.0
    return cross - within, cross, within


def prompt_test(baseline: list[Run], check: list[Run], tol: float, rng: np.random.Generator) -> PromptTest:
    """Exact permutation test of one prompt: are the check runs exchangeable with the baseline repeats?"""
    runs = baseline + check
    mode = "logprobs" if all(r.positions is not None for r in runs) else "text"
    n = len(runs)
    dist = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            dist[i, j] = dist[j, i] = run_distance(runs[i], runs[j], tol, mode)
    labels = _labellings(n, len(check), rng)
    stats = np.array([_stat(dist, lab)[0] for lab in labels])
    eps = 1e-12 * (1.0 + np.abs(stats))
    # p of each labelling: share of labellings at least as extreme (ties count against rejection)
    null_p = np.array([(stats >= s - e).mean() for s, e in zip(stats, eps, strict=True)])
    observed = labels.index(tuple(range(len(baseline), n)))
    s_obs, cross, within = _stat(dist, labels[observed])
    return PromptTest(mode, s_obs, float(null_p[observed]), cross, within, null_p)


@dataclass
class ChangeResult:
    """The combined test over prompts."""

    statistic: float  # Fisher: sum of -log p over prompts
    p_value: float
    min_p_value: float  # the smallest p-value this design (prompts, repeats) can reach
    prompts: list[PromptTest]


def combine_prompts(tests: list[PromptTest], draws: int = 20000, seed: int = 0) -> ChangeResult:
    """Fisher's combination with its exact null (independent uniform labellings per prompt), by Monte Carlo."""
    if not tests:
        return ChangeResult(0.0, 1.0, 1.0, [])
    rng = np.random.default_rng(seed)
    obs = float(sum(-math.log(t.p_value) for t in tests))
    null = np.zeros(draws)
    for t in tests:
        null += -np.log(t.null_p[rng.integers(0, len(t.null_p), size=draws)])
    p = float((1 + np.sum(null >= obs - 1e-9)) / (draws + 1))
    reachable = math.exp(-sum(math.log(len(t.null_p)) for t in tests))  # every prompt at its smallest rank
    min_p = max(1.0 / (draws + 1), reachable)
    return ChangeResult(obs, p, min_p, tests)


# --- is the baseline deterministic up to engine noise? ----------------------------------------------

#: a divergence of greedy repeats is beyond engine noise when both sides' decision margins exceed
#: tolerance + NOISE_FACTOR x the repeats' own logprob noise (median over positions where they agree)
NOISE_FACTOR = 8.0


def _gap(p: Position, other: str) -> float:
    """How far p's chosen token is ahead of `other` (a lower bound when `other` is not in p's top-k)."""
    lps = p.logprobs()
    return lps[p.token] - lps[other] if other in lps else lps[p.token] - min(lps.values())


def _pair_noise(a: tuple[Position, ...], b: tuple[Position, ...]) -> tuple[list[float], float | None]:
    """(mean |delta logprob| over shared top tokens at each agreeing position, min margin at the first divergence)."""
    deltas: list[float] = []
    for pa, pb in zip(a, b, strict=False):
        if pa.token != pb.token:
            return deltas, min(_gap(pa, pb.token), _gap(pb, pa.token))
        la, lb = pa.logprobs(), pb.logprobs()
        shared = set(la) & set(lb)
        deltas.append(sum(abs(la[k] - lb[k]) for k in shared) / len(shared))
    return deltas, None


def baseline_determinism(runs: list[list[Run]], tol: float) -> dict[str, Any]:
    """Whether a greedy baseline's repeats agree up to engine noise (logprob runs only).

    The noise is the median per-position logprob difference where two repeats chose the same token;
    a prompt is non-deterministic when two of its repeats part at a position where each is ahead of
    the other's token by more than tol + NOISE_FACTOR x noise: not a near-tie flip but another
    decision (e.g. a provider answering part of the baseline from another model, which would make
    a later full switch look like the baseline's own noise)."""
    deltas: list[float] = []
    divergences: list[tuple[int, float]] = []
    for j, per in enumerate(runs):
        lp = [r.positions for r in per if r.positions is not None]
        for a, b in itertools.combinations(lp, 2):
            d, margin = _pair_noise(a, b)
            deltas.extend(d)
            if margin is not None:
                divergences.append((j, margin))
    noise = float(np.median(deltas)) if deltas else 0.0
    threshold = tol + NOISE_FACTOR * noise
    bad = sorted({j for j, m in divergences if m > threshold})
    worst = max((m for _j, m in divergences), default=0.0)
    return {"deterministic": not bad, "noise": noise, "threshold": threshold, "prompts": bad,
            "largest_divergence_margin": worst}
