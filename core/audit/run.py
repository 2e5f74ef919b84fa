"""Audit orchestration: query, map, re-score, test, combine; resumable from the raw log.

Layout of --out DIR: `audit.json` (the run's configuration, no secrets), `raw.jsonl` (every
request attempt and answer, appended as it arrives), `calibration.json` (measured or copied),
`report.json` and `report.html`. Rerunning the same command resumes: answers already in
raw.jsonl are reused, so an interrupted and an uninterrupted run reach the same verdict.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..engine.speculative import SpeculativeEngine
from ..models import LoadedModel
from ..transcript import SamplingParams
from ..web.http import redact_url
from . import AuditError, AuditUsageError, calibrate
from .client import ENDPOINTS, ClientOptions, ProviderClient, ProviderFault, validate_for
from .reference import align_reference, load_audit_reference, rescore_reference
from .statistics import agreement_test, combine, logprob_test, mmd_test, prompt_logprob_stat
from .tokens import TokenMap, map_logprob_content, retokenize_text

log = logging.getLogger("specguard.audit.run")
DEFAULT_PROMPTS = [
    "Explain why the sky is blue in two sentences.",
    "Write a haiku about autumn leaves.",
    "List three uses of a paperclip.",
    "What is the capital of France, and why is it famous?",
    "Describe how a bicycle works.",
    "Give a short recipe for pancakes.",
    "Summarise the plot of a detective story in three sentences.",
    "What are prime numbers? Give examples.",
]


#: request fields the audit sets itself: --extra-body may not replace them
RESERVED_FIELDS = frozenset({"model", "messages", "prompt", "max_tokens", "temperature", "logprobs", "top_logprobs",
                             "seed"})

#: the smallest value of each count (max_tokens is checked against the reference's context once it is loaded)
_AT_LEAST = {"budget": 1, "top_logprobs": 0, "calibration_prompts": 1, "mmd_samples": 0, "mmd_prompts": 0,
             "max_retries": 0, "reference_texts": 0, "seeded_prompts": 0, "rut_prompts": 0, "rut_samples": 0,
             "sample_top_k": 0}


@dataclass(frozen=True)
class AuditConfig:
    """One audit's configuration (`audit.json`), validated when made: an AuditUsageError names the
    field, what was given and what is expected. Checks that need the reference (max_tokens against
    its context) are made once it is loaded (`run_audit`)."""

    base_url: str
    model: str
    reference: str
    prompts_file: str | None = None
    budget: int = 8
    max_tokens: int = 32
    alpha: float = 0.01
    top_logprobs: int = 5
    honest_class: str = "auto"
    calibration: str | None = None
    calibration_prompts: int = 8
    margin: float = 1.5
    min_effect_logprob: float = 0.1
    min_effect_tokens: float = 0.05
    mmd_prompts: int = 4
    request_logprobs: bool = True
    mmd_samples: int = 0
    api_key_env: str | None = None
    timeout: float = 60.0
    max_retries: int = 6
    extra: dict[str, Any] = field(default_factory=dict)
    #: "chat" (/chat/completions) or "completions" (legacy /completions, the prompt sent as raw text)
    endpoint: str = "chat"
    #: provider-specific fields merged into every request, e.g. {"repeat_penalty": 1.0} for llama.cpp servers
    extra_body: dict[str, Any] = field(default_factory=dict)
    #: most provider choices demoted by a repetition penalty tolerated before the run is inconclusive
    max_adjusted: float = 0.1
    #: prompts whose reference text (the reference's own continuation at the first divergence) the report shows
    reference_texts: int = 16
    # sampled audits (core/audit/sampled.py): seeded-exact and RUT prompts, shared sampling parameters
    seeded_prompts: int = 0
    rut_prompts: int = 0
    rut_samples: int = 15
    sample_temperature: float = 1.0
    sample_top_p: float = 1.0
    sample_top_k: int = 0
    sample_seed: int = 0
    #: "auto" (llama.cpp on a GGUF reference, core/audit/reference.py), "torch" or "llamacpp"
    reference_runtime: str = "auto"

    def __post_init__(self) -> None:
        if self.endpoint not in ENDPOINTS:
            raise AuditUsageError("unknown endpoint", field="endpoint", got=self.endpoint, expected=list(ENDPOINTS))
        if self.endpoint != "chat" and (self.seeded_prompts or self.rut_prompts):
            raise AuditUsageError("sampled audits (--seeded, --rut) ask chat completions", field="endpoint",
                                  got=self.endpoint, expected="chat")
        if self.honest_class not in calibrate.CLASS_NAMES:
            raise AuditUsageError("unknown honest class", field="honest_class", got=self.honest_class,
                                  expected=list(calibrate.CLASS_NAMES))
        if not isinstance(self.extra_body, dict) or RESERVED_FIELDS & set(self.extra_body):
            raise AuditUsageError("extra request fields may not replace the audit's own", field="extra_body",
                                  got=sorted(RESERVED_FIELDS & set(self.extra_body)) if isinstance(self.extra_body, dict)
                                  else type(self.extra_body).__name__, expected="other fields (e.g. repeat_penalty)")
        for name, low in _AT_LEAST.items():
            if getattr(self, name) < low:
                raise AuditUsageError(f"must be at least {low}", field=name, got=getattr(self, name), expected=f">= {low}")
        if not 0 < self.alpha < 1:
            raise AuditUsageError("alpha out of range", field="alpha", got=self.alpha, expected="(0, 1)")
        if not 0 <= self.max_adjusted <= 1:
            raise AuditUsageError("max_adjusted out of range", field="max_adjusted", got=self.max_adjusted,
                                  expected="[0, 1]")
        for name in ("timeout", "margin"):
            if not getattr(self, name) > 0:
                raise AuditUsageError("must be positive", field=name, got=getattr(self, name), expected="> 0")

    @classmethod
    def from_cli(cls, *, model_name: str, text_only: bool, base_url: str | None = None,
                 extra_body: dict[str, Any] | None = None, **options: Any) -> AuditConfig:
        """From `audit run`'s options: `--model` (model_name), `--text-only` (no logprobs asked), an
        absent `--base-url` (several --provider) as "", the rest named as the fields."""
        return cls(base_url=base_url or "", model=model_name, request_logprobs=not text_only,
                   extra_body=extra_body or {}, **options)


def load_prompts(path: str | None, n: int) -> list[str]:
    """Up to `n` distinct prompt texts from a JSONL file (`prompt`, `text` or first of `turns`), else a built-in set.

    Never repeats a prompt: a repeated greedy prompt is the same evidence twice, and counting it as
    independent would overstate significance (and could accuse an honest provider)."""
    if not path:
        base = DEFAULT_PROMPTS
    else:
        base = []
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise AuditUsageError("cannot read prompts file", field="prompts", got=str(exc)) from exc
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AuditUsageError("prompts file line is not JSON", field=f"line {i + 1}", got=line[:80]) from exc
            text = rec.get("prompt") or rec.get("text") or (rec.get("turns") or [None])[0] if isinstance(rec, dict) else rec
            if isinstance(text, str) and text:
                base.append(text)
    if not base:
        raise AuditUsageError("no prompts", field="prompts", got=path)
    distinct = list(dict.fromkeys(base))
    if n > len(distinct):
        # a repeated greedy prompt gets the same answer: counted twice it would fake independent evidence
        log.warning("asked for %d prompts but only %d distinct ones exist: using %d", n, len(distinct), len(distinct))
    return distinct[:n]


def _ask(client: ProviderClient, body: dict[str, Any], offline: bool, budget: Any = None):
    """The answer to `body` (logged, or fresh), and the reason it was not sent (cost budget), if any."""
    if offline:
        return client.cache.get(_key(client, body)), None
    if budget is not None and _key(client, body) not in client.cache:
        if not budget.reserve(body):
            return None, "not sent: cost budget exhausted"
        ans = client.chat(body)
        budget.charge(body, ans)
        return ans, None
    return client.chat(body), None


def _answer_parts(ans: dict[str, Any] | None, request: dict[str, Any], endpoint: str = "chat",
                  not_sent: str | None = None) -> tuple[str | None, Any, str | None, str | None]:
    """(content, logprobs.content or None, finish_reason, problem) from a chat completion answer.

    The answer is validated against `request` first (validate_answer); a contract breach is a
    problem of this query ("provider fault: ..."), so neither a run nor its resume can crash on it."""
    if ans is None:
        return None, None, None, not_sent or "no answer after retries"
    try:
        checked = validate_for(endpoint, ans, request)
    except ProviderFault as fault:
        return None, None, None, f"provider fault: {fault.summary()}"
    return checked.content, checked.logprobs, checked.finish_reason, None


@dataclass
class ScoredAnswer:
    """The reference's re-scoring of one answer: the model work of one prompt, JSON-serialisable so
    that it can run elsewhere (`specguard.audit.ray_run` runs it on Ray actors)."""

    with_logprobs: bool
    fields: dict[str, Any]  # the prompt's report fields (tokens, unmappable, unscored, ...)
    tokens: int
    unscored: int
    positions: list[tuple[bool, float]]  # (the reference agrees, its decision margin) per scored position
    stat: float | None = None  # the prompt's mean |delta logprob| (None: nothing to compare)
    pairs: list[tuple[float, float]] = field(default_factory=list)  # (reference, provider) logprobs
    adjusted: list[int] = field(default_factory=list)  # positions set aside as repetition-penalty demotions
    ids: list[int] = field(default_factory=list)  # the scored answer tokens (reference ids)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ScoredAnswer:
        return cls(d["with_logprobs"], d["fields"], d["tokens"], d["unscored"],
                   [(bool(a), m) for a, m in d["positions"]], d["stat"], [(r, p) for r, p in d["pairs"]],
                   [int(p) for p in d.get("adjusted", [])], [int(t) for t in d.get("ids", [])])


@dataclass
class StagedPrompt:
    """One prompt answered and scored by a stage outside the loop (`run_audit(stage=...)`)."""

    answer: dict[str, Any] | None
    scored: ScoredAnswer | None  # None when the answer has a problem (no answer, provider fault)


def score_answer(cfg: AuditConfig, reference: LoadedModel, tmap: TokenMap, prompt_ids: list[int],
                 content: str | None, lpc: Any) -> ScoredAnswer:
    """Map an answer's tokens to the reference and re-score them (teacher-forced with logprobs,
    else the text-only walk)."""
    if lpc is not None:
        mapped = map_logprob_content(lpc, tmap)
        alts = [list(t) for t in mapped.provider_top]
        scores = rescore_reference(reference, [(prompt_ids, mapped.ids, alts)], top_k=cfg.top_logprobs)[0] if mapped.ids else []
        stat, _n, pairs = prompt_logprob_stat(mapped.provider_logprobs, mapped.provider_top, scores)
        kept = stat if stat == stat else None
        adjusted = _penalty_adjusted(prompt_ids, mapped.ids, mapped.provider_logprobs, mapped.provider_top, scores)
        return ScoredAnswer(True, {"tokens": mapped.total, "unmappable": mapped.unmappable, "unscored": mapped.unscored,
                                   "unmappable_reasons": mapped.reasons, "logprob_stat": kept},
                            mapped.total, mapped.unscored, [(s.agrees, s.margin) for s in scores], kept, pairs,
                            sorted(adjusted), list(mapped.ids))
    scores, rest = align_reference(reference, prompt_ids, content, cfg.max_tokens, cfg.top_logprobs)
    return ScoredAnswer(False, {"tokens": len(scores) + rest, "unmappable": rest, "unscored": rest, "text_only": True},
                        len(scores) + rest, rest, [(s.agrees, s.margin) for s in scores],
                        ids=[s.token_id for s in scores])


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=None, leave=False)


def obtain_calibration(cfg: AuditConfig, reference: LoadedModel, prompt_ids: list[list[int]], out: Path) -> dict[str, Any]:
    """The user's calibration file, the one saved in --out, or a fresh measurement saved there."""
    if cfg.calibration:
        return calibrate.load(Path(cfg.calibration), reference)
    saved = out / "calibration.json"
    if saved.is_file():
        return calibrate.load(saved, reference)
    shipped = calibrate.committed(reference)
    if shipped is not None:  # the committed calibration of this exact reference (e.g. the default model)
        cal = calibrate.load(shipped, reference)
        calibrate.save(cal, saved)
        return cal
    if cfg.honest_class == "auto":
        from ..drafters.llamacpp import target_gguf

        if target_gguf(reference) is None:  # llama.cpp cannot be calibrated: auto would have nothing to accept
            raise AuditUsageError(calibrate.AUTO_NEEDS_ENGINE, field="honest_class",
                                  got=f"auto, reference {reference.name} without a calibration or a GGUF",
                                  expected="--calibration FILE or --honest-class bf16|fp32")
    setups = calibrate.HONEST_CLASSES[cfg.honest_class] if cfg.honest_class in calibrate.HONEST_CLASSES else calibrate.SETUPS
    cal = calibrate.first_use(reference, prompt_ids[: cfg.calibration_prompts], cfg.max_tokens, cfg.top_logprobs, setups,
                              cache=cfg.honest_class in ("auto", "cross-engine"))
    calibrate.save(cal, saved)
    return cal


@dataclass(frozen=True)
class AuditInputs:
    """What every stage of a run shares: the reference, the prompts (texts and reference ids) and the null."""

    reference: LoadedModel
    prompts: list[str]
    prompt_ids: list[list[int]]
    calibration: dict[str, Any]
    null: dict[str, Any]  # calibrate.honest_null: the honest class's noise (tau, p0, pool, ...)


@dataclass
class Tally:
    """The greedy answers' evidence, prompt by prompt: what the statistics and the report are made of."""

    per_prompt: list[dict[str, Any]] = field(default_factory=list)
    lp_stats: list[float] = field(default_factory=list)
    disagree_margins: list[float] = field(default_factory=list)
    agree: int = 0
    by_position: list[tuple[int, bool, float]] = field(default_factory=list)
    adjusted_total: int = 0
    scatter: list[tuple[float, float]] = field(default_factory=list)
    total_tokens: int = 0
    unmappable: int = 0
    with_logprobs: int = 0
    faults: int = 0

    def add(self, rec: dict[str, Any], scored: ScoredAnswer) -> None:
        """Count one scored answer (its record gets the per-prompt fields; positions set aside are skipped)."""
        rec.update(scored.fields)
        self.total_tokens += scored.tokens
        self.unmappable += scored.unscored
        if scored.with_logprobs:
            self.with_logprobs += 1
            if scored.stat is not None:
                self.lp_stats.append(scored.stat)
            self.scatter.extend(scored.pairs)
        adjusted = set(scored.adjusted)
        n_dis = 0
        for pos, (agrees, margin) in enumerate(scored.positions):
            if pos in adjusted:
                continue
            if agrees:
                self.agree += 1
            else:
                self.disagree_margins.append(margin)
                n_dis += 1
            self.by_position.append((pos, agrees, margin))
        rec["disagreements"] = n_dis
        rec["penalty_adjusted"] = len(adjusted)
        self.adjusted_total += len(adjusted)

    @property
    def answered(self) -> int:
        return sum(1 for r in self.per_prompt if not r.get("problem"))

    @property
    def adjusted_fraction(self) -> float:
        scored_positions = len(self.by_position) + self.adjusted_total
        return self.adjusted_total / scored_positions if scored_positions else 0.0


def run_audit(cfg: AuditConfig, out: Path, reference: LoadedModel | None = None, offline: bool = False,
              stage: Any = None, budget: Any = None, calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or, with offline=True, re-analyse from raw.jsonl) an audit; writes report.json/html.

    `stage(cfg, client, reference, prompts, prompt_ids) -> list[StagedPrompt]` answers and scores
    the prompts elsewhere (specguard.audit.ray_run); the rest of the run is the same. `budget`
    (core/audit/multi.py `Budget`) is asked before each new query and refuses the ones that could
    exceed it; `calibration` is an already measured one (several providers share it)."""
    from .report import write_reports

    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(asdict(cfg), indent=1))
    inputs = prepare_inputs(cfg, out, reference, calibration)
    client = open_client(cfg, out, offline)
    staged = None if stage is None or offline else stage(cfg, client, inputs.reference, inputs.prompts, inputs.prompt_ids)
    tally = answer_and_score(cfg, inputs, client, staged, offline, budget)
    results, sampled = run_tests(cfg, inputs, client, tally, offline, budget)
    report = build_report(cfg, inputs, tally, results, client.stats)
    _add_sampled_and_budget(report, sampled, tally, budget)
    client.close()
    write_reports(report, out)
    return report


def prepare_inputs(cfg: AuditConfig, out: Path, reference: LoadedModel | None,
                   calibration: dict[str, Any] | None) -> AuditInputs:
    """Load the reference, the prompts and the calibration; the honest null comes first: a class that
    cannot be used stops the run before any query is paid for."""
    reference = reference or load_audit_reference(cfg)
    prompts = load_prompts(cfg.prompts_file, cfg.budget)
    prompt_ids = [_prompt_ids(reference, p, cfg.endpoint) for p in prompts]
    longest = max((len(p) for p in prompt_ids), default=0)
    if cfg.max_tokens < 1 or longest + cfg.max_tokens > reference.max_context:
        raise AuditUsageError("max_tokens does not fit the model context", field="max_tokens", got=cfg.max_tokens,
                              expected=f"1..{max(1, reference.max_context - longest)} (context {reference.max_context}, "
                                       f"longest prompt {longest} tokens)")
    cal = calibration or obtain_calibration(cfg, reference, prompt_ids, out)
    null = calibrate.honest_null(cal, cfg.honest_class, cfg.margin)
    return AuditInputs(reference, prompts, prompt_ids, cal, null)


def open_client(cfg: AuditConfig, out: Path, offline: bool) -> ProviderClient:
    """The provider's client over OUT/raw.jsonl (offline: reads the log back, never asks)."""
    return ProviderClient(cfg.base_url, cfg.model, log_path=out / "raw.jsonl", options=ClientOptions(
        api_key_env=None if offline else cfg.api_key_env, timeout=cfg.timeout,
        max_retries=0 if offline else cfg.max_retries, endpoint=cfg.endpoint, setup_errors=not offline))


def answer_and_score(cfg: AuditConfig, inputs: AuditInputs, client: ProviderClient, staged: list[StagedPrompt] | None,
                     offline: bool, budget: Any) -> Tally:
    """Ask each greedy prompt (or take the stage's answer), validate, re-score it with the reference, count."""
    reference = inputs.reference
    tally = Tally()
    tmap = TokenMap(reference.tokenizer, reference.vocab_size)
    bar = _progress(len(inputs.prompts), "audit")
    try:
        for i, (text, pids) in enumerate(zip(inputs.prompts, inputs.prompt_ids, strict=True)):
            body = prompt_request(cfg, text)
            ans, not_sent = (staged[i].answer, None) if staged else _ask(client, body, offline, budget)
            content, lpc, finish, problem = _answer_parts(ans, body, cfg.endpoint, not_sent)
            rec: dict[str, Any] = {"index": i, "prompt": text, "finish_reason": finish, "problem": problem}
            if problem and problem.startswith("provider fault"):
                tally.faults += 1
            bar.update(1)
            if problem:
                tally.per_prompt.append(rec)
                continue
            scored = staged[i].scored if staged else score_answer(cfg, reference, tmap, pids, content, lpc)
            if scored is None:
                raise AuditError("the audit stage scored no answer for a prompt with an answer", field=f"prompt {i}")
            tally.add(rec, scored)
            if i < cfg.reference_texts:
                rec["divergence"] = first_divergence(reference, pids, scored, cfg.max_tokens)
            _note_prompt_tokens(rec, ans, pids)
            tally.per_prompt.append(rec)
    finally:
        bar.close()
    return tally


def _note_prompt_tokens(rec: dict[str, Any], ans: Any, prompt_ids: list[int]) -> None:
    """Record a provider that counts the prompt's tokens differently (another template or tokenizer)."""
    usage = ans.get("usage") if isinstance(ans, dict) else None
    if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int) \
            and usage["prompt_tokens"] != len(prompt_ids):
        rec["prompt_tokens_mismatch"] = {"provider": usage["prompt_tokens"], "reference": len(prompt_ids)}


def run_tests(cfg: AuditConfig, inputs: AuditInputs, client: ProviderClient, tally: Tally, offline: bool,
              budget: Any) -> tuple[list[Any], dict[str, Any]]:
    """The statistical tests: token agreement, logprobs, MMD (text only), seeded-exact and RUT (asked here)."""
    null = inputs.null
    results = []
    if any("disagreements" in r for r in tally.per_prompt):
        pos_summary = [(p, a, m >= null["tau"] or a) for p, a, m in tally.by_position]
        results.append(agreement_test(tally.disagree_margins, tally.agree, null["tau"], null["p0"], cfg.alpha,
                                      cfg.min_effect_tokens, pos_summary))
    if tally.lp_stats:
        # the declared effect is a deviation *beyond* the class's accepted honest noise (the pool mean):
        # against the cross-engine class (llama.cpp ~0.1 nats) an absolute 0.1 could never be powered
        declared_lp = cfg.min_effect_logprob + sum(null["pool"]) / len(null["pool"])
        results.append(logprob_test(tally.lp_stats, null["pool"], cfg.alpha, declared_lp))
    if cfg.mmd_samples >= 2 and tally.with_logprobs == 0:
        mmd = _mmd(cfg, client, inputs.reference, inputs.prompts, inputs.prompt_ids, offline, budget)
        if mmd.samples:
            results.append(mmd)
    sampled: dict[str, Any] = {}
    if cfg.seeded_prompts or cfg.rut_prompts:
        from .sampled import run_sampled

        def ask(b: dict[str, Any]):
            ans, not_sent = _ask(client, b, offline, budget)
            return _answer_parts(ans, b, cfg.endpoint, not_sent)

        more, sampled = run_sampled(cfg, ask, inputs.reference, inputs.prompts, inputs.prompt_ids, null["tau"])
        results.extend(more)
    return results, sampled


def judge(cfg: AuditConfig, null: dict[str, Any], results: list[Any], tally: Tally) -> dict[str, Any]:
    """The verdict with its reasons: the tests combined, then what makes a run inconclusive whatever they say."""
    frac = tally.unmappable / tally.total_tokens if tally.total_tokens else 0.0
    adjusted_frac = tally.adjusted_fraction
    verdict = combine(results, cfg.alpha, frac, claim=null["claim"])
    if verdict["verdict"] == "substituted":
        verdict["reasons"].append(f"honest class {null['class']}: {', '.join(null['setups'])}")
    if verdict["verdict"] == "consistent" and adjusted_frac > cfg.max_adjusted:
        scored_positions = len(tally.by_position) + tally.adjusted_total
        verdict = {**verdict, "verdict": "inconclusive", "reasons": [
            f"the provider did not decode greedily: at {tally.adjusted_total} of {scored_positions} positions "
            f"({adjusted_frac:.1%}, limit {cfg.max_adjusted:.0%}) its own logprobs rank an earlier-seen token above "
            "the one it chose (a repetition penalty, e.g. llama.cpp's default repeat_penalty 1.1); those positions "
            "are left out of token agreement; rerun with --extra-body '{\"repeat_penalty\": 1.0}' if the provider "
            "accepts it"]}
    if tally.answered == 0:
        verdict = {"verdict": "inconclusive", "reasons": ["the provider answered no prompt"], "rejected": {}, "alpha": cfg.alpha}
    return verdict


def build_report(cfg: AuditConfig, inputs: AuditInputs, tally: Tally, results: list[Any],
                 client_stats: dict[str, Any]) -> dict[str, Any]:
    """report.json (format specguard-audit-report/v1, docs/audit.md)."""
    null, reference = inputs.null, inputs.reference
    frac = tally.unmappable / tally.total_tokens if tally.total_tokens else 0.0
    power_by_tokens = (_power_by_tokens(tally.by_position, cfg, null)
                       if any("disagreements" in r for r in tally.per_prompt) else [])
    return {
        "format": "specguard-audit-report/v1",
        "provider": {"base_url": redact_url(cfg.base_url), "model": cfg.model},
        "reference": {"name": reference.name, "digest": reference.digest, "runtime": getattr(reference, "runtime", "torch")},
        "config": {**asdict(cfg), "base_url": redact_url(cfg.base_url)},
        **judge(cfg, null, results, tally),
        "tests": [r.to_json() for r in results],
        "claim": null["claim"],
        "honest_class": {"name": null["class"], "requested": cfg.honest_class, "claim": null["claim"],
                         "setups": null["setups"], "missing_setups": null["missing_setups"],
                         "worst_setup": null["worst_setup"],
                         "mean_abs_delta": null["mean_abs_delta"], "tau": null["tau"], "p0": null["p0"],
                         "margin": null["margin"], "calibration_max_tokens": inputs.calibration.get("max_tokens")},
        "endpoint": cfg.endpoint,
        "headline": headline(results, reference.name, tally.answered),
        "penalty_adjusted": {"positions": tally.adjusted_total, "fraction": tally.adjusted_fraction,
                             "limit": cfg.max_adjusted},
        "power_by_max_tokens": power_by_tokens,
        "distinguishes": _distinguishes(results, null),
        "prompts": {"requested": len(inputs.prompts), "answered": tally.answered, "with_logprobs": tally.with_logprobs,
                    "provider_faults": tally.faults},
        "tokens": {"total": tally.total_tokens, "unmappable_or_unscored": tally.unmappable, "unmappable_fraction": frac},
        "client": client_stats,
        "per_prompt": tally.per_prompt,
        "scatter": tally.scatter[:4000],
        "null_pool": null["pool"],
    }


def _add_sampled_and_budget(report: dict[str, Any], sampled: dict[str, Any], tally: Tally, budget: Any) -> None:
    """The sampled tests' queries, the cost budget, and a reason for every query the budget refused."""
    if sampled:
        report["sampled"] = sampled
    not_sent = sum(1 for r in tally.per_prompt if str(r.get("problem", "")).startswith("not sent"))
    not_sent += sum(1 for t in sampled.values() for q in t["queries"] if str(q.get("problem", "")).startswith("not sent"))
    if budget is not None:
        report["budget"] = budget.to_json()
    if not_sent:
        report["reasons"] = [*report["reasons"], f"stopped before exceeding the cost budget: {not_sent} queries not sent"]


def first_divergence(reference: LoadedModel, prompt_ids: list[int], scored: ScoredAnswer,
                     max_tokens: int) -> dict[str, Any] | None:
    """Where the reference first chooses another token than the provider (positions set aside as
    repetition-penalty demotions skipped), with both texts split there for the report:
    {"position", "margin", "prefix", "provider_token", "provider_rest", "reference_token",
    "reference_rest"}; the reference's text is its own greedy continuation from that point."""
    from .reference import greedy_reference

    adjusted = set(scored.adjusted)
    pos = next((i for i, (agrees, _m) in enumerate(scored.positions)
                if not agrees and i not in adjusted and i < len(scored.ids)), None)
    if pos is None:
        return None
    tok = reference.tokenizer

    def text(ids: list[int]) -> str:
        return tok.decode([t for t in ids if t not in reference.eos_token_ids], skip_special_tokens=False)

    def split(prefix_ids: list[int], rest_ids: list[int]) -> tuple[str, str]:
        head, whole = text(prefix_ids), text(prefix_ids + rest_ids[:1])
        full = text(prefix_ids + rest_ids)
        first = whole[len(head):] if whole.startswith(head) else whole
        return first, full[len(whole):] if full.startswith(whole) else full

    prefix = scored.ids[:pos]
    generated, _lps, _tops = greedy_reference(reference, list(prompt_ids) + prefix, max(1, max_tokens - pos),
                                             reference.eos_token_ids)
    provider_token, provider_rest = split(prefix, scored.ids[pos:])
    reference_token, reference_rest = split(prefix, generated)
    return {"position": pos, "margin": scored.positions[pos][1], "prefix": text(prefix),
            "provider_token": provider_token, "provider_rest": provider_rest,
            "reference_token": reference_token, "reference_rest": reference_rest}


def headline(results: list[Any], reference_name: str, answered: int) -> str:
    """One sentence for a reader who is not a statistician."""
    ta = next((r for r in results if r.name == "token_agreement"), None)
    if answered == 0:
        return "The provider answered no prompt: nothing could be compared."
    if ta is None or not ta.samples:
        return f"No token of the provider's answers could be compared with what {reference_name} would choose."
    return (f"{ta.statistic:.1%} of the provider's tokens differ from what {reference_name} would choose; "
            f"honest engines differ on at most {ta.details['null_rate']:.1%} "
            f"({ta.samples} tokens compared, near-ties set aside).")


def _prompt_ids(reference: LoadedModel, text: str, endpoint: str) -> list[int]:
    """Reference prompt ids: the chat template applied (chat), or the raw text's tokens (completions)."""
    if endpoint == "completions":
        return reference.encode(text)
    return reference.encode_chat([{"role": "user", "content": text}])


def prompt_request(cfg: AuditConfig, text: str) -> dict[str, Any]:
    """The greedy request body for one prompt on the configured endpoint."""
    body: dict[str, Any] = dict(cfg.extra_body)
    if cfg.endpoint == "completions":
        body.update(prompt=text, temperature=0, max_tokens=cfg.max_tokens, seed=0)
        if cfg.request_logprobs:
            body.update(logprobs=cfg.top_logprobs)
        return body
    body.update(messages=[{"role": "user", "content": text}], temperature=0, max_tokens=cfg.max_tokens, seed=0)
    if cfg.request_logprobs:
        body.update(logprobs=True, top_logprobs=cfg.top_logprobs)
    return body


def _penalty_adjusted(prompt_ids: list[int], ids: list[int], lps: list[float | None],
                      tops: list[dict[int, float]], scores: list[Any]) -> set[int]:
    """Positions where the provider's choice was demoted by a repetition penalty, by its own account.

    A position counts only if the provider disagrees with the reference, the provider's *own*
    logprobs rank the reference's choice above the token it chose, and the reference's choice
    already occurred (prompt or earlier output): what llama.cpp's default repeat_penalty 1.1 does.
    These positions are left out of token agreement and counted; too many make the run inconclusive,
    so a provider that claims it everywhere cannot reach "consistent" this way."""
    seen = set(prompt_ids)
    out: set[int] = set()
    for pos, s in enumerate(scores):
        lp = lps[pos] if pos < len(lps) else None
        top = tops[pos] if pos < len(tops) else {}
        if (not s.agrees and lp is not None and s.expected_id in seen
                and top.get(s.expected_id, float("-inf")) > lp + 1e-6):
            out.add(pos)
        if pos < len(ids):
            seen.add(ids[pos])
    return out


def _power_by_tokens(by_position: list[tuple[int, bool, float]], cfg: AuditConfig,
                     null: dict[str, Any]) -> list[dict[str, Any]]:
    """The token-agreement test as if the run had asked for fewer tokens per answer (8, 16, 32, ...)."""
    budgets = sorted({b for b in (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192) if b < cfg.max_tokens}
                     | {cfg.max_tokens})
    rows = []
    for budget in budgets:
        agree = sum(1 for p, a, _m in by_position if p < budget and a)
        margins = [m for p, a, m in by_position if p < budget and not a]
        r = agreement_test(margins, agree, null["tau"], null["p0"], cfg.alpha, cfg.min_effect_tokens)
        rows.append({"max_tokens": budget, "decisive_positions": r.samples, "hard_disagreement_rate": r.statistic,
                     "p_value": r.p_value, "mde": r.mde, "powered": r.powered})
    return rows


def _key(client: ProviderClient, body: dict[str, Any]) -> str:
    from .client import request_key

    return request_key({"model": client.model, **body})


def _distinguishes(results: list[Any], null: dict[str, Any]) -> list[str]:
    lines = [f"honest class {null['class']}: the set-ups {', '.join(null['setups'])} are accepted as honest"]
    if null["class"] == "cross-engine":
        lines.append("against the cross-engine class, substitutes as close to the reference as another honest engine "
                     "(8-bit weights: q8, int8) are not distinguishable; 4-bit re-quantization, pruned layers and "
                     "other models are (docs/audit.md, 'What each class can detect')")
    for r in results:
        if r.name == "logprob" and r.mde is not None:
            lines.append(f"logprob: substitutes whose mean |delta logprob| exceeds {r.mde:.4g} nats/token; honest set-ups "
                         f"accepted up to {max(null['mean_abs_delta'].values()):.4g} (x{null['margin']} margin), so a "
                         "substitute closer to the reference than the honest class is not distinguishable")
        if r.name == "token_agreement" and r.mde is not None:
            lines.append(f"token agreement: substitutes that change >= {r.mde:.2%} of decisive tokens "
                         f"(near-ties below margin {null['tau']:.3g} are discounted)")
        if r.name == "seeded_exact" and r.mde is not None:
            lines.append(f"seeded-exact: any seeded token the reference re-derives differently (margin >= "
                         f"{r.details.get('tau', 0):.3g}) rejects; a substitute changing >= {r.mde:.2%} of decisive "
                         "sampled positions is caught with 95% probability (providers implementing specguard's "
                         "seeded sampling only)")
        if r.name == "rut" and r.mde is not None:
            lines.append(f"RUT: a substitute whose sampled answers rank below all {r.details.get('reference_samples')} "
                         f"reference samples on >= {r.mde:.0%} of prompts is caught with 95% probability")
    return lines


def _mmd(cfg: AuditConfig, client: ProviderClient, reference: LoadedModel, prompts: list[str],
         prompt_ids: list[list[int]], offline: bool, budget: Any = None):
    groups = []
    engine = SpeculativeEngine(reference)
    for i in range(min(cfg.mmd_prompts, len(prompts))):
        xs, ys = [], []
        for j in range(cfg.mmd_samples):
            body = {**prompt_request(cfg, prompts[i]), "temperature": 1.0, "seed": 1000 + j}
            body.pop("logprobs", None)
            body.pop("top_logprobs", None)
            ans, not_sent = _ask(client, body, offline, budget)
            content, _lpc, _f, problem = _answer_parts(ans, body, cfg.endpoint, not_sent)
            if not problem and content is not None:
                xs.append(retokenize_text(content, reference).ids)
            t = engine.generate(prompt_ids[i], SamplingParams(max_tokens=cfg.max_tokens, temperature=1.0, seed=5000 + j))
            ys.append(retokenize_text(reference.tokenizer.decode(
                [x for x in t.output_ids if x not in reference.eos_token_ids], skip_special_tokens=False), reference).ids)
        groups.append((xs, ys))
    return mmd_test(groups, cfg.max_tokens)


def load_config(out: Path) -> AuditConfig:
    try:
        data = json.loads((out / "audit.json").read_text())
        return AuditConfig(**data)
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise AuditUsageError("not an audit directory (audit.json missing or invalid)", field="DIR", got=str(out)) from exc
