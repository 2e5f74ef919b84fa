"""Sampled-output audits: the seeded-exact test and the rank-based uniformity test (RUT).

- **Seeded-exact** (for providers that implement specguard's seeded sampling, docs/audit.md
  "Seeded sampling contract"): a sampled request with a seed is a deterministic function of
  (weights, prompt, temperature, top_p, top_k, seed). The reference re-derives each position's
  token by one teacher-forced pass with the same Gumbel noise (`rescore` with the sampling
  parameters); any disagreement whose reference margin is at least `tau` is a hard mismatch and
  rejects (p = 0). Near-ties (margin < tau, tau from the honest class) are discounted. Power:
  with n decisive positions and no mismatch allowed, a substitute that changes a share r of
  decisive positions is caught with probability 1 - (1 - r)^n; the minimum detectable effect is
  the r where that reaches 95%.
- **RUT** (rank-based uniformity test, ICLR 2026): one ordinary sampled answer per prompt; its
  reference log-likelihood is ranked among M reference samples of the same prompt (randomised
  ties), u = (rank + U) / (M + 1). Under honesty the answer and the M samples are exchangeable,
  so u ~ Uniform(0, 1) exactly; a Cramer-von Mises test (scipy) checks uniformity. Power figure:
  the smallest share of answers ranked below all M reference samples (the rest uniform) detected
  with 95% power at alpha, by Monte Carlo; RUT declares no effect, so it never blocks "consistent".
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats

from ..engine import kv
from ..engine.sampling import NEAR_TIE_EPSILON, filtered_logprobs
from ..engine.speculative import SpeculativeEngine
from ..models import LoadedModel
from ..transcript import SamplingParams
from .rescore import PositionScore, rescore
from .statistics import POWER, TestResult

SEEDED_TAG = "specguard/audit/seeded-exact/v1"
RUT_TAG = "specguard/audit/rut/v1"


def derive_seed(base: int, tag: str, *index: int) -> int:
    """A 62-bit seed for request `index` of a test, from the auditor's `--sample-seed`."""
    data = f"{tag}|{int(base)}|{'|'.join(str(int(i)) for i in index)}".encode()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") >> 2


def seeded_params(max_tokens: int, temperature: float, top_p: float, top_k: int, seed: int) -> SamplingParams:
    """The sampling parameters of a seeded-exact request (the engine's Gumbel-max mode)."""
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)


def seeded_body(messages: list[dict[str, str]], params: SamplingParams) -> dict[str, Any]:
    """The chat request for a seeded-exact query (top_k is sent only when set: an extension field)."""
    body: dict[str, Any] = {"messages": messages, "temperature": params.temperature, "top_p": params.top_p,
                            "max_tokens": params.max_tokens, "seed": params.seed}
    if params.top_k:
        body["top_k"] = params.top_k
    return body


# --- seeded-exact ---------------------------------------------------------------------------------


@dataclass
class SeededCheck:
    """One seeded answer re-derived: decisive agreements, hard mismatches and near-ties."""

    positions: int = 0
    agree: int = 0
    hard: list[int] = field(default_factory=list)  # positions of hard mismatches
    near: int = 0
    unscored: int = 0
    first_mismatch_margin: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"positions": self.positions, "agree": self.agree, "hard_mismatches": self.hard, "near_ties": self.near,
                "unscored": self.unscored, "first_mismatch_margin": self.first_mismatch_margin}


def _tally(check: SeededCheck, scores: list[PositionScore], tau: float, eos_ids: set[int] | None = None,
           eos_at: int | None = None) -> None:
    for i, s in enumerate(scores):
        check.positions += 1
        ok = s.expected_id in eos_ids if (eos_ids is not None and i == eos_at) else s.agrees
        if ok:
            check.agree += 1
        elif s.margin < tau:
            check.near += 1
        else:
            check.hard.append(i)
            if check.first_mismatch_margin is None:
                check.first_mismatch_margin = s.margin


def check_seeded_ids(reference: LoadedModel, prompt_ids: list[int], ids: list[int], params: SamplingParams,
                     finished: bool, tau: float) -> SeededCheck:
    """Teacher-force the provider's token ids under the seed; a `stop` finish must be the reference's EOS choice."""
    check = SeededCheck()
    eos = sorted(reference.eos_token_ids)
    seq = list(ids) + ([eos[0]] if finished and eos and len(ids) < params.max_tokens else [])
    if not seq:
        return check
    scores = rescore(reference.model, [(prompt_ids, seq, None)], params=params, top_k=0)[0]
    _tally(check, scores, tau, set(reference.eos_token_ids), len(ids) if len(seq) > len(ids) else None)
    return check


def check_seeded_text(reference: LoadedModel, prompt_ids: list[int], content: str, params: SamplingParams,
                      tau: float) -> SeededCheck:
    """Text-only: regenerate with the seed and walk the provider's text with the reference's tokens.

    Positions whose text continues the answer agree; at the first one that does not (or where
    the answer goes on after the reference's EOS), the reference's margin decides between a
    hard mismatch and a near-tie; the rest of the answer is unscored (the prefixes differ)."""
    check = SeededCheck()
    transcript = SpeculativeEngine(reference).generate(prompt_ids, params)
    ref_ids = list(transcript.output_ids)
    if not ref_ids:
        return check
    scores = rescore(reference.model, [(prompt_ids, ref_ids, None)], params=params, top_k=0)[0]
    tok = reference.tokenizer
    eos = reference.eos_token_ids
    body = [t for t in ref_ids if t not in eos]
    for i, tid in enumerate(ref_ids):
        check.positions += 1
        if tid in eos:
            matched = content == tok.decode(body[: len([t for t in ref_ids[:i] if t not in eos])], skip_special_tokens=False)
        else:
            piece = tok.decode([t for t in ref_ids[: i + 1] if t not in eos], skip_special_tokens=False)
            matched = content.startswith(piece.rstrip("\ufffd"))
        if matched:
            check.agree += 1
            continue
        if scores[i].margin < tau:
            check.near += 1
        else:
            check.hard.append(i)
            check.first_mismatch_margin = scores[i].margin
        check.unscored = len(ref_ids) - i - 1
        return check
    if ref_ids[-1] not in eos:  # the reference ran to max_tokens: the answer must end where it does
        full = tok.decode(body, skip_special_tokens=False)
        if content != full and not (full.endswith("\ufffd") and content.startswith(full.rstrip("\ufffd"))):
            check.hard.append(len(ref_ids) - 1)
            check.agree -= 1
    return check


def seeded_exact_test(checks: list[SeededCheck], alpha: float, declared: float) -> TestResult:
    """Hard, exact test: p = 0 with any hard mismatch, else 1; mde = 1 - (1 - POWER)^(1/n)."""
    n = sum(c.agree + len(c.hard) for c in checks)
    hard = sum(len(c.hard) for c in checks)
    mde = 1 - (1 - POWER) ** (1 / n) if n else None
    p = 0.0 if hard else 1.0
    return TestResult("seeded_exact", hard / n if n else 0.0, p, n, mde, declared,
                      {"hard_mismatches": hard, "near_ties": sum(c.near for c in checks),
                       "unscored": sum(c.unscored for c in checks), "answers": len(checks),
                       "answers_with_mismatch": sum(1 for c in checks if c.hard),
                       "per_answer": [c.to_json() for c in checks]})


# --- RUT ------------------------------------------------------------------------------------------


def loglik(reference: LoadedModel, prompt_ids: list[int], ids_list: list[list[int]]) -> list[float]:
    """Reference log-likelihood (temperature 1, unfiltered) of each continuation of one prompt."""
    items = [(prompt_ids, ids, None) for ids in ids_list if ids]
    scored = iter(rescore(reference.model, items, top_k=0, batch_size=len(items))) if items else iter(())
    out = []
    for ids in ids_list:
        out.append(sum(s.logprob for s in next(scored)) if ids else 0.0)
    return out


def answer_ids(reference: LoadedModel, content: str, finished: bool) -> list[int]:
    """The canonical reference tokens of an answer's text, plus EOS when it stopped on its own.

    Provider answers and reference samples go through this same function, so the ranks stay
    exchangeable under honesty whatever tokenization the provider used."""
    ids = reference.encode(content) if content else []
    eos = sorted(reference.eos_token_ids)
    return list(ids) + ([eos[0]] if finished and eos else [])


@torch.inference_mode()
def reference_samples(reference: LoadedModel, prompt_ids: list[int], m: int, max_tokens: int, temperature: float,
                      top_p: float, seed: int) -> list[tuple[str, bool]]:
    """M reference answers (text, stopped on EOS) for one prompt, drawn together in one batch.

    RUT needs exact draws from the reference's distribution (after temperature and top-p, the same
    filter as the engine), not specguard's seeded noise, so the M rows share one KV cache and a
    torch generator seeded from `seed` (reproducible on one machine; the ranks' law does not depend on it)."""
    if m <= 0:
        return []
    model = reference.model
    gen = torch.Generator().manual_seed(int(seed))
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p)
    eos = reference.eos_token_ids
    cache = kv.new_cache(model)
    kw = {kv._cache_kwarg(type(model)): cache}
    ids = torch.tensor([list(prompt_ids)] * m, dtype=torch.long)
    logits = model(input_ids=ids, use_cache=True, logits_to_keep=1, **kw).logits[:, -1].float()
    rows: list[list[int]] = [[] for _ in range(m)]
    done = [False] * m
    for _ in range(max_tokens):
        probs = filtered_logprobs(logits, params).exp()
        toks = torch.multinomial(probs, 1, generator=gen)[:, 0].tolist()
        for r, t in enumerate(toks):
            if not done[r]:
                rows[r].append(int(t))
                done[r] = int(t) in eos
        if all(done):
            break
        logits = model(input_ids=torch.tensor(toks)[:, None], use_cache=True, logits_to_keep=1, **kw).logits[:, -1].float()
    out = []
    for row in rows:
        stopped = bool(row) and row[-1] in eos
        out.append((reference.tokenizer.decode([x for x in row if x not in eos], skip_special_tokens=False), stopped))
    return out


def rut_rank(provider_stat: float, reference_stats: list[float], rng: np.random.Generator) -> float:
    """Randomised PIT: u = (#below + U * (#ties + 1)) / (M + 1), Uniform(0, 1) under exchangeability."""
    below = sum(1 for s in reference_stats if s < provider_stat - 1e-9)
    ties = sum(1 for s in reference_stats if abs(s - provider_stat) <= 1e-9)
    return (below + rng.random() * (ties + 1)) / (len(reference_stats) + 1)


def cvm_pvalue(us: list[float]) -> tuple[float, float]:
    """Cramer-von Mises statistic and p-value of `us` against Uniform(0, 1) (p = 1 below two ranks)."""
    if len(us) < 2:
        return float("nan"), 1.0
    res = stats.cramervonmises(np.asarray(us, dtype=float), "uniform")
    return float(res.statistic), float(min(1.0, max(0.0, res.pvalue)))


_MDE_CACHE: dict[tuple[int, int, float, int], float | None] = {}


def rut_mde(n: int, m: int, alpha: float, reps: int = 200, seed: int = 0) -> float | None:
    """Smallest share eps of answers ranked below all M reference samples (the rest uniform) that the
    CvM test detects with 95% power at alpha, by Monte Carlo on a grid of 0.05; None if even eps = 1 is not."""
    key = (n, m, alpha, reps)
    if key in _MDE_CACHE:
        return _MDE_CACHE[key]
    rng = np.random.default_rng(seed)
    crit = np.quantile([stats.cramervonmises(rng.random(n), "uniform").statistic for _ in range(reps)], 1 - alpha)
    base = rng.random((reps, n))
    pick = rng.random((reps, n))
    found = None
    for eps in np.linspace(0.05, 1.0, 20):
        x = np.where(pick < eps, base / (m + 1), base)
        power = np.mean([stats.cramervonmises(row, "uniform").statistic > crit for row in x])
        if power >= POWER:
            found = round(float(eps), 2)
            break
    _MDE_CACHE[key] = found
    return found


def rut_test(us: list[float], m: int, alpha: float, power_reps: int = 200) -> TestResult:
    """CvM uniformity test of the ranks; mde as a share of bottom-ranked answers, no declared effect
    (RUT never blocks "consistent": its power on a few prompts is low)."""
    stat, p = cvm_pvalue(us)
    mde = rut_mde(len(us), m, alpha, reps=power_reps) if len(us) >= 2 else None
    return TestResult("rut", stat, p, len(us), mde, None,
                      {"ranks": [round(float(u), 6) for u in us], "mean_rank": float(np.mean(us)) if us else None,
                       "reference_samples": m,
                       "effect_unit": "share of answers ranked below every reference sample"})


def near_tie_margin(null_tau: float, temperature: float) -> float:
    """Near-tie margin in seeded-score units (log p / T + Gumbel): the honest logit noise scaled by 1/T."""
    return max(NEAR_TIE_EPSILON, null_tau / max(temperature, 1e-6)) if math.isfinite(null_tau) else NEAR_TIE_EPSILON


# --- running both against a provider -------------------------------------------------------------

Ask = Any  # callable(body) -> (content, logprobs content, finish_reason, problem)


def run_sampled(cfg: Any, ask: Ask, reference: LoadedModel, prompts: list[str], prompt_ids: list[list[int]],
                null_tau: float) -> tuple[list[TestResult], dict[str, Any]]:
    """Query and score the seeded-exact (`cfg.seeded_prompts`) and RUT (`cfg.rut_prompts`) tests.

    `ask` sends one chat body (or reads it back from the raw log) and returns the validated parts.
    Returns the TestResults and a JSON summary of every sampled query (for report.json)."""
    results: list[TestResult] = []
    summary: dict[str, Any] = {}
    n_seeded = min(int(getattr(cfg, "seeded_prompts", 0) or 0), len(prompts))
    n_rut = min(int(getattr(cfg, "rut_prompts", 0) or 0), len(prompts))
    if n_seeded:
        summary["seeded_exact"], seeded = _run_seeded(cfg, ask, reference, prompts[:n_seeded], prompt_ids, null_tau)
        results.extend(seeded)
    if n_rut:
        summary["rut"], rut = _run_rut(cfg, ask, reference, prompts[:n_rut], prompt_ids)
        results.extend(rut)
    return results, summary


def _run_seeded(cfg: Any, ask: Ask, reference: LoadedModel, prompts: list[str], prompt_ids: list[list[int]],
                null_tau: float) -> tuple[dict[str, Any], list[TestResult]]:
    """The seeded-exact queries of `prompts` re-derived by the reference: (summary, [test] or [])."""
    from .tokens import TokenMap, map_logprob_content

    temp, top_p, top_k = float(cfg.sample_temperature), float(cfg.sample_top_p), int(cfg.sample_top_k)
    tau = near_tie_margin(null_tau, temp)
    tmap = TokenMap(reference.tokenizer, reference.vocab_size)
    checks: list[SeededCheck] = []
    records = []
    for i, prompt in enumerate(prompts):
        params = seeded_params(cfg.max_tokens, temp, top_p, top_k, derive_seed(cfg.sample_seed, SEEDED_TAG, i))
        body = seeded_body([{"role": "user", "content": prompt}], params)
        if cfg.request_logprobs:
            body["logprobs"] = True
        content, lpc, finish, problem = ask(body)
        rec: dict[str, Any] = {"index": i, "seed": params.seed, "problem": problem}
        if problem or content is None:
            records.append(rec)
            continue
        if lpc is not None:
            mapped = map_logprob_content(lpc, tmap)
            check = check_seeded_ids(reference, prompt_ids[i], mapped.ids, params,
                                     finish == "stop" and not mapped.unscored, tau)
            check.unscored += mapped.unscored
        else:
            check = check_seeded_text(reference, prompt_ids[i], content, params, tau)
        checks.append(check)
        rec.update(check.to_json())
        records.append(rec)
    summary = {"temperature": temp, "top_p": top_p, "top_k": top_k, "tau": tau, "queries": records}
    if not checks:
        return summary, []
    res = seeded_exact_test(checks, cfg.alpha, cfg.min_effect_tokens)
    res.details["tau"] = tau
    return summary, [res]


def _run_rut(cfg: Any, ask: Ask, reference: LoadedModel, prompts: list[str],
             prompt_ids: list[list[int]]) -> tuple[dict[str, Any], list[TestResult]]:
    """One sampled answer per prompt ranked among the reference's own samples: (summary, [test] or [])."""
    temp, top_p = float(cfg.sample_temperature), float(cfg.sample_top_p)
    m = int(cfg.rut_samples)
    rng = np.random.default_rng(derive_seed(cfg.sample_seed, RUT_TAG, 2**31))
    us: list[float] = []
    records = []
    for i, prompt in enumerate(prompts):
        body = {"messages": [{"role": "user", "content": prompt}], "temperature": temp, "top_p": top_p,
                "max_tokens": cfg.max_tokens, "seed": derive_seed(cfg.sample_seed, RUT_TAG, i)}
        content, _lpc, finish, problem = ask(body)
        rec: dict[str, Any] = {"index": i, "problem": problem}
        if problem or content is None:
            records.append(rec)
            continue
        samples = reference_samples(reference, prompt_ids[i], m, cfg.max_tokens, temp, top_p,
                                    derive_seed(cfg.sample_seed, RUT_TAG + "/reference", i))
        ids = [answer_ids(reference, content, finish == "stop")] + [answer_ids(reference, t, s) for t, s in samples]
        lls = loglik(reference, prompt_ids[i], ids)
        u = rut_rank(lls[0], lls[1:], rng)
        us.append(u)
        rec.update(rank=u, provider_loglik=lls[0], reference_loglik_median=float(np.median(lls[1:])))
        records.append(rec)
    summary = {"reference_samples": m, "temperature": temp, "top_p": top_p, "queries": records}
    return summary, [rut_test(us, m, cfg.alpha)] if us else []
