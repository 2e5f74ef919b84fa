"""The audit's tests and their combination into one verdict.

- logprob test: per prompt, the mean |provider logprob - reference logprob| over the chosen
  token and the provider's top-k alternatives; the mean over prompts is compared with a
  bootstrap null drawn from the calibrated honest set-up with the largest noise (times a margin).
- token agreement: positions where the reference's own choice (given the provider's prefix)
  differs from the provider's token, counting only *decisive* positions (reference margin >=
  tau, tau calibrated from honest disagreements); one-sided binomial test against the honest
  disagreement rate (an upper confidence bound from calibration).
- MMD: Hamming-kernel MMD^2 between provider and reference samples of the same prompts,
  permutation test within prompts (Gao et al. 2025).
- verdict: Holm over the tests used; see `combine` and docs/audit.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

POWER = 0.95


@dataclass
class TestResult:
    """One test's outcome (the effect unit is the statistic's)."""

    __test__ = False  # not a pytest class
    name: str
    statistic: float
    p_value: float
    samples: int
    mde: float | None  # smallest effect (in the statistic's unit) detectable with POWER at alpha
    declared_effect: float | None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def powered(self) -> bool:
        return self.mde is not None and self.declared_effect is not None and self.mde <= self.declared_effect

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["powered"] = self.powered
        return out


def prompt_logprob_stat(
    provider_lps: list[float | None], provider_tops: list[dict[int, float]], scores: list[Any]
) -> tuple[float, int, list[tuple[float, float]]]:
    """(mean |delta|, pairs used, (reference, provider) chosen-token pairs) for one prompt."""
    deltas: list[float] = []
    pairs: list[tuple[float, float]] = []
    for lp, top, sc in zip(provider_lps, provider_tops, scores, strict=False):
        if lp is None:
            continue
        deltas.append(abs(lp - sc.logprob))
        pairs.append((sc.logprob, lp))
        for tid, alp in top.items():
            if tid != sc.token_id and tid in sc.alt_logprobs:
                deltas.append(abs(alp - sc.alt_logprobs[tid]))
    return (float(np.mean(deltas)) if deltas else float("nan")), len(deltas), pairs


def logprob_test(stats: list[float], null_pool: list[float], alpha: float, declared: float,
                 boot: int = 9999, seed: int = 0) -> TestResult:
    """Bootstrap test of the mean per-prompt statistic against the honest null pool."""
    obs = [s for s in stats if s == s]
    m = len(obs)
    pool = np.asarray(null_pool, dtype=float)
    rng = np.random.default_rng(seed)
    t_null = pool[rng.integers(0, len(pool), size=(boot, m))].mean(axis=1) if m and len(pool) else np.zeros(1)
    t_obs = float(np.mean(obs)) if m else float("nan")
    p = float((1 + np.sum(t_null >= t_obs)) / (len(t_null) + 1)) if m else 1.0
    crit = float(np.quantile(t_null, 1 - alpha))
    mde = crit + 1.645 * float(np.std(t_null)) if m else None
    return TestResult("logprob", t_obs, p, m, mde, declared,
                      {"null_mean": float(np.mean(t_null)), "critical_value": crit, "per_prompt": obs})


def _binom_sf_all(n: int, p: float) -> np.ndarray:
    """sf[d] = P(X >= d) for d = 0..n+1, X ~ Binomial(n, p)."""
    if p <= 0 or p >= 1:
        sf = np.zeros(n + 2)
        sf[: (n + 1 if p >= 1 else 1)] = 1.0
        return sf
    k = np.arange(n + 1)
    logpmf = (math.lgamma(n + 1) - np.array([math.lgamma(i + 1) + math.lgamma(n - i + 1) for i in k])
              + k * math.log(p) + (n - k) * math.log1p(-p))
    pmf = np.exp(logpmf)
    sf = np.append(np.cumsum(pmf[::-1])[::-1], 0.0)
    return np.minimum(sf, 1.0)


def _binom_sf(d: int, n: int, p: float) -> float:
    """P(X >= d) for X ~ Binomial(n, p)."""
    return 1.0 if d <= 0 else float(_binom_sf_all(n, p)[min(d, n + 1)])


def agreement_test(disagree_margins: list[float], agree_count: int, tau: float, p0: float,
                   alpha: float, declared: float, by_position: list[tuple[int, bool, bool]] | None = None) -> TestResult:
    """One-sided binomial test of decisive disagreements; near-ties (margin < tau) are discounted."""
    hard = sum(1 for mg in disagree_margins if mg >= tau)
    near = len(disagree_margins) - hard
    n = agree_count + hard  # decisive positions (agreements kept, near-tie disagreements dropped)
    p = _binom_sf(hard, n, p0) if n else 1.0
    sf0 = _binom_sf_all(n, p0)
    d_crit = next((d for d in range(1, n + 1) if sf0[d] <= alpha), None)
    mde: float | None = None
    if d_crit is not None:
        lo, hi = p0, 1.0
        if _binom_sf(d_crit, n, hi) >= POWER:
            for _ in range(40):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if _binom_sf(d_crit, n, mid) < POWER else (lo, mid)
            mde = hi
    rate = hard / n if n else 0.0
    return TestResult("token_agreement", rate, p, n, mde, declared,
                      {"hard_disagreements": hard, "near_tie_disagreements": near, "tau": tau,
                       "null_rate": p0, "agreement": 1 - rate, "by_position": by_position or []})


def hamming_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """k(x, y) = number of positions where x and y hold the same token (-1 = padding, never equal)."""
    eq = (a[:, None, :] == b[None, :, :]) & (a[:, None, :] >= 0)
    return eq.sum(-1).astype(float)


def _mmd2(k: np.ndarray, nx: int) -> float:
    kxx, kyy, kxy = k[:nx, :nx], k[nx:, nx:], k[:nx, nx:]
    ny = k.shape[0] - nx
    sx = (kxx.sum() - np.trace(kxx)) / (nx * (nx - 1))
    sy = (kyy.sum() - np.trace(kyy)) / (ny * (ny - 1))
    return float(sx + sy - 2 * kxy.mean())


def mmd_test(groups: list[tuple[list[list[int]], list[list[int]]]], length: int, perms: int = 1000,
             seed: int = 0) -> TestResult:
    """Sum over prompts of unbiased MMD^2 (Hamming kernel); within-prompt permutation p-value."""
    rng = np.random.default_rng(seed)
    kernels: list[tuple[np.ndarray, int]] = []
    for xs, ys in groups:
        if len(xs) < 2 or len(ys) < 2:
            continue
        arr = np.full((len(xs) + len(ys), length), -1, dtype=np.int64)
        for r, seq in enumerate(list(xs) + list(ys)):
            seq = seq[:length]
            arr[r, : len(seq)] = seq
        kernels.append((hamming_kernel(arr, arr), len(xs)))
    if not kernels:
        return TestResult("mmd", float("nan"), 1.0, 0, None, None, {"reason": "fewer than 2 samples per side"})
    obs = sum(_mmd2(k, nx) for k, nx in kernels)
    count = 0
    for _ in range(perms):
        tot = 0.0
        for k, nx in kernels:
            idx = rng.permutation(k.shape[0])
            tot += _mmd2(k[np.ix_(idx, idx)], nx)
        count += tot >= obs
    samples = sum(k.shape[0] for k, _ in kernels)
    return TestResult("mmd", obs, (1 + count) / (perms + 1), samples, None, None, {"prompts": len(kernels)})


def holm(results: list[TestResult], alpha: float) -> dict[str, bool]:
    """Holm step-down rejections at family-wise level alpha."""
    order = sorted(results, key=lambda r: r.p_value)
    out = {r.name: False for r in results}
    for i, r in enumerate(order):
        if r.p_value <= alpha / (len(order) - i):
            out[r.name] = True
        else:
            break
    return out


def combine(results: list[TestResult], alpha: float, unmappable_fraction: float,
            max_unmappable: float = 0.05, claim: str | None = None) -> dict[str, Any]:
    """Verdict: substituted if any test rejects (Holm); consistent only if token agreement was
    used, every used test is powered for its declared effect and nothing rejects; else inconclusive.

    `claim` is what "consistent" asserts under the declared honest class (calibrate.CLAIMS): with the
    cross-engine class "consistent with the claimed weights on some honest engine", with `fp32`
    "identical implementation"; "substituted" means outside every honest set-up of the class."""
    rejected = holm(results, alpha)
    reasons: list[str] = []
    if any(rejected.values()):
        verdict = "substituted"
        reasons = [f"{n} rejects the honest-noise null (Holm, alpha={alpha})" for n, v in rejected.items() if v]
        # never quote the claim here: it says what "consistent" means, and a substituted verdict must not say it
        reasons.append("the answers are outside the noise of every honest set-up of the declared honest class")
    else:
        names = {r.name for r in results}
        if "token_agreement" not in names:
            reasons.append("no token-agreement evidence: logprobs or text alone cannot rule out re-scored answers")
        for r in results:
            if r.declared_effect is not None and not r.powered:
                reasons.append(f"{r.name}: the run could not detect the declared effect {r.declared_effect:g} "
                               f"(smallest detectable {r.mde if r.mde is None else round(r.mde, 6)}); add prompts")
        if unmappable_fraction > max_unmappable:
            reasons.append(f"{unmappable_fraction:.1%} of provider tokens could not be mapped (limit {max_unmappable:.0%})")
        verdict = "inconclusive" if reasons else "consistent"
        if not reasons:
            reasons.append("every test passed and had power for its declared effect")
            if claim:
                reasons.append(f"claim: {claim}")
    return {"verdict": verdict, "reasons": reasons, "rejected": rejected, "alpha": alpha}
