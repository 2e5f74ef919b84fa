"""`specguard audit monitor`: watch a (closed) model behind an API for a silent change.

No reference weights are needed. `baseline` sends a fixed prompt set R times (greedy, logprobs
when offered) and stores each answer's fingerprint (monitor_stats.Run) in a versioned JSON store;
`check` re-sends the same requests C times and tests whether the new answers are exchangeable
with the baseline's repeats (monitor_stats.change_test: the provider's own run-to-run noise is
the null, false alarms at most alpha); `history` lists the checks.

Store layout (--store DIR):
- `baseline.json`: {"format": "specguard-monitor-baseline/v1", "body": {...}, "digest"}, where
  digest = "sha256:" + hex(tagged_hash(BASELINE_TAG, RFC 8785 JSON of body)). Every load
  recomputes it (a changed answer, prompt or parameter is a VerificationError) and `check
  --baseline-digest` pins it against a copy kept elsewhere (someone who can rewrite the store
  can also recompute an unkeyed digest).
- `history.jsonl`: one line per check start and per finished check {"record", "digest"}, each
  record naming the previous line's digest (the first names the baseline's), so a removed or
  edited line breaks the chain; a truncated or deleted file is caught by pinning the head that
  `check` prints (`--history-head`). A check records its start before it reuses any raw log, so
  logs planted for a check never started are refused.
- `checks/NNNN.json`: a check's full result; `raw/*.jsonl`: every request attempt (client.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..canonical import canonical_json, tagged_hash
from ..errors import ParseError, VerificationError
from ..web.http import redact_url
from . import AuditUsageError
from .client import ClientOptions, ProviderClient, ProviderFault, validate_answer
from .monitor_stats import (
    ChangeResult,
    PromptTest,
    Run,
    baseline_determinism,
    combine_prompts,
    prompt_test,
    run_from_answer,
)

BASELINE_FORMAT = "specguard-monitor-baseline/v1"
CHECK_FORMAT = "specguard-monitor-check/v1"
BASELINE_TAG = "specguard/audit-monitor/baseline/v1"
HISTORY_TAG = "specguard/audit-monitor/history/v1"
#: verdict -> exit status of `audit monitor check` (errors keep their own codes 1-5)
EXIT_CODES = {"no_change": 0, "inconclusive": 1, "change": 6}
#: a check with more unanswered prompts than this share is inconclusive
MAX_MISSING = 0.25


@dataclass(frozen=True)
class MonitorConfig:
    """What a baseline asks; a check repeats exactly these requests. Validated when made (AuditUsageError)."""

    base_url: str
    model: str
    prompts: list[str]
    repeats: int = 5
    max_tokens: int = 16
    top_logprobs: int = 5
    logprobs: bool = True
    tolerance: float = 1e-3
    api_key_env: str | None = None
    timeout: float = 60.0
    max_retries: int = 6
    #: accept a baseline whose greedy repeats part beyond engine noise as the null (insecure: a provider
    #: mixing models into the baseline can then switch unseen); checks say so in their reasons
    allow_nondeterministic: bool = False

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_cli(cls, *, model_name: str, prompts_file: str | None, n_prompts: int, text_only: bool,
                 **options: Any) -> MonitorConfig:
        """From `audit monitor baseline`'s options: the prompts read from `prompts_file` (at most
        `n_prompts`, none repeated), logprobs asked unless `text_only`; the rest named as the fields."""
        from .run import load_prompts

        return cls(model=model_name, prompts=load_prompts(prompts_file, n_prompts), logprobs=not text_only, **options)

    def validate(self) -> None:
        if not self.prompts:
            raise AuditUsageError("no prompts", field="prompts", got=0, expected=">= 1")
        if not 2 <= self.repeats <= 50:
            raise AuditUsageError("baseline repeats out of range", field="repeats", got=self.repeats, expected="2..50")
        if not 1 <= self.max_tokens <= 4096:
            raise AuditUsageError("max_tokens out of range", field="max_tokens", got=self.max_tokens, expected="1..4096")
        if not 0 <= self.top_logprobs <= 20:
            raise AuditUsageError("top_logprobs out of range", field="top_logprobs", got=self.top_logprobs,
                                  expected="0..20")
        if not 0 <= self.tolerance < 1:
            raise AuditUsageError("tolerance out of range", field="tolerance", got=self.tolerance, expected="[0, 1)")

    def request(self, prompt: str) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "temperature": 0,
                                "max_tokens": self.max_tokens, "seed": 0}
        if self.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = self.top_logprobs
        return body


def _digest(tag: str, body: Any) -> str:
    return "sha256:" + tagged_hash(tag, canonical_json(body)).hex()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _query(cfg: MonitorConfig, log_path: Path, transport: Any = None) -> list[dict[str, Any]]:
    """One answer per prompt: {"run": Run json} or {"problem": str}. Resumes from log_path."""
    options = ClientOptions(api_key_env=cfg.api_key_env, timeout=cfg.timeout, max_retries=cfg.max_retries)
    client = ProviderClient(cfg.base_url, cfg.model, log_path=log_path, options=options, transport=transport)
    out: list[dict[str, Any]] = []
    try:
        for prompt in cfg.prompts:
            request = cfg.request(prompt)
            answer = client.chat(request)
            if answer is None:
                out.append({"problem": "no answer after retries"})
                continue
            try:
                checked = validate_answer(answer, {"model": cfg.model, **request})
            except ProviderFault as fault:
                out.append({"problem": f"provider fault: {fault.summary()}"})
                continue
            out.append({"run": run_from_answer(checked.content, checked.logprobs).to_json()})
    finally:
        client.close()
    return out


# --- baseline ------------------------------------------------------------------------------------


def create_baseline(cfg: MonitorConfig, store: Path, *, force: bool = False, transport: Any = None) -> dict[str, Any]:
    """Query the prompt set `repeats` times (all prompts per round) and write baseline.json."""
    cfg.validate()
    path = store / "baseline.json"
    if path.exists():
        if not force:
            raise AuditUsageError("the store already has a baseline (use --force to replace it)", field="store",
                                  got=str(path))
        _archive(store)
    store.mkdir(parents=True, exist_ok=True)
    rounds = [_query(cfg, store / "raw" / f"baseline-r{r}.jsonl", transport) for r in range(cfg.repeats)]
    answers = [[rounds[r][j] for r in range(cfg.repeats)] for j in range(len(cfg.prompts))]
    with_lp = sum(1 for per in answers for a in per if a.get("run", {}).get("positions") is not None)
    answered = sum(1 for per in answers for a in per if "run" in a)
    body = {
        "created": time.time(),
        "base_url": redact_url(cfg.base_url),
        "base_url_redacted": redact_url(cfg.base_url) != cfg.base_url,
        "model": cfg.model,
        "api_key_env": cfg.api_key_env,
        "request": {"temperature": 0, "seed": 0, "max_tokens": cfg.max_tokens, "logprobs": cfg.logprobs,
                    "top_logprobs": cfg.top_logprobs if cfg.logprobs else 0},
        "tolerance": cfg.tolerance,
        "allow_nondeterministic": cfg.allow_nondeterministic,
        "repeats": cfg.repeats,
        "prompts": cfg.prompts,
        "answers": answers,
        "summary": {"answered": answered, "asked": cfg.repeats * len(cfg.prompts), "with_logprobs": with_lp},
    }
    digest = _digest(BASELINE_TAG, body)
    _write_atomic(path, json.dumps({"format": BASELINE_FORMAT, "body": body, "digest": digest}, indent=1))
    runs = [[Run.from_json(a["run"]) for a in per if "run" in a] for per in answers]
    det = baseline_determinism(runs, cfg.tolerance)
    return {"digest": digest, **body["summary"], "prompts": len(cfg.prompts), "repeats": cfg.repeats,
            "mode": "logprobs" if with_lp == answered and answered else "text", "determinism": det,
            "allow_nondeterministic": cfg.allow_nondeterministic}


def _archive(store: Path) -> Path:
    """Move the current baseline, its history, checks and raw logs under DIR/archive/<time>/ (never reused)."""
    dest = store / "archive" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    n = 0
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{dest.name.split('.')[0]}.{n}")
    dest.mkdir(parents=True)
    for name in ("baseline.json", "history.jsonl", "checks", "raw"):
        if (store / name).exists():
            os.replace(store / name, dest / name)
    return dest


def load_baseline(store: Path, expected_digest: str | None = None) -> dict[str, Any]:
    """The verified baseline body (with "digest"); ParseError if unreadable, VerificationError if altered."""
    path = store / "baseline.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AuditUsageError("no baseline in the store (run `audit monitor baseline` first)", field="store",
                              got=str(store)) from None
    except (OSError, ValueError, RecursionError) as exc:
        raise ParseError("baseline.json is not JSON", field="baseline.json", got=str(exc)[:120]) from exc
    if not isinstance(doc, dict) or doc.get("format") != BASELINE_FORMAT or not isinstance(doc.get("body"), dict):
        raise ParseError("baseline.json has an unknown format", field="format",
                         got=doc.get("format") if isinstance(doc, dict) else type(doc).__name__, expected=BASELINE_FORMAT)
    body = doc["body"]
    try:
        actual = _digest(BASELINE_TAG, body)
    except Exception as exc:  # a NaN or a non-string key cannot be canonical
        raise ParseError("baseline body is not canonical JSON", field="body", got=str(exc)[:120]) from exc
    if doc.get("digest") != actual:
        raise VerificationError("baseline.json was altered after it was written", field="digest",
                                got=doc.get("digest"), expected=actual)
    if expected_digest is not None and expected_digest != actual:
        raise VerificationError("baseline is not the pinned one", field="baseline_digest", got=actual,
                                expected=expected_digest)
    try:
        prompts, repeats, answers = body["prompts"], body["repeats"], body["answers"]
        req = body["request"]
        ok = (isinstance(prompts, list) and prompts and all(isinstance(p, str) for p in prompts)
              and isinstance(repeats, int) and repeats >= 2 and isinstance(answers, list)
              and len(answers) == len(prompts) and all(isinstance(a, list) and len(a) == repeats for a in answers)
              and isinstance(req, dict) and isinstance(req.get("max_tokens"), int)
              and isinstance(req.get("top_logprobs"), int) and isinstance(req.get("logprobs"), bool)
              and isinstance(body.get("tolerance"), int | float) and isinstance(body.get("model"), str)
              and isinstance(body.get("base_url"), str))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise ParseError("baseline body is malformed", field="body", expected="prompts, repeats, answers, request")
    body["runs"] = [[Run.from_json(a["run"]) if isinstance(a, dict) and "run" in a else None for a in per]
                    for per in answers]
    body["digest"] = actual
    return body


# --- history -------------------------------------------------------------------------------------


def read_chain(store: Path, baseline_digest: str) -> list[dict[str, Any]]:
    """Every verified history record (checks and check starts, oldest first), each with its "digest".

    VerificationError if a line was altered, removed or reordered (the chain starts at the baseline)."""
    path = store / "history.jsonl"
    if not path.is_file():
        return []
    records: list[dict[str, Any]] = []
    prev = baseline_digest
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            entry = json.loads(line)
            record, digest = entry["record"], entry["digest"]
            actual = _digest(HISTORY_TAG, record)
            kind = record.get("kind", "check")
        except Exception as exc:
            raise ParseError("history line is malformed", field=f"history.jsonl line {i}", got=line[:80]) from exc
        if digest != actual:
            raise VerificationError("history line was altered", field=f"history.jsonl line {i}", got=digest,
                                    expected=actual)
        if record.get("prev") != prev:
            raise VerificationError("history chain is broken (a line was removed, reordered or belongs to another "
                                    "baseline)", field=f"history.jsonl line {i}", got=record.get("prev"), expected=prev)
        if kind not in ("check", "started") or not isinstance(record.get("check"), int):
            raise ParseError("history record has an unknown kind", field=f"history.jsonl line {i}", got=kind,
                             expected="check or started")
        prev = digest
        records.append({**record, "digest": digest})
    return records


def chain_head(records: list[dict[str, Any]], baseline_digest: str) -> str:
    """The digest a new history line names as its predecessor (the baseline's when the history is empty)."""
    return records[-1]["digest"] if records else baseline_digest


def after_pin(records: list[dict[str, Any]], baseline_digest: str, pinned: str) -> list[dict[str, Any]]:
    """The records written after the pinned head; VerificationError if the chain does not contain it.

    Pin the head printed by the last check (`--history-head`): a history truncated or deleted
    since (hiding a `change`) no longer contains it, and a recomputed chain cannot fake it."""
    if pinned == baseline_digest:
        return records
    for i, r in enumerate(records):
        if r["digest"] == pinned:
            return records[i + 1:]
    raise VerificationError("history does not contain the pinned head (truncated, deleted or replaced)",
                            field="history_head", got=chain_head(records, baseline_digest), expected=pinned)


def read_history(store: Path, baseline_digest: str, expected_head: str | None = None) -> list[dict[str, Any]]:
    """The verified completed checks (oldest first); with `expected_head`, the chain must contain it."""
    records = read_chain(store, baseline_digest)
    if expected_head is not None:
        after_pin(records, baseline_digest, expected_head)
    return [r for r in records if r.get("kind", "check") == "check"]


def _append_history(store: Path, record: dict[str, Any], prev: str) -> str:
    record = {**record, "prev": prev}
    digest = _digest(HISTORY_TAG, record)
    with (store / "history.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps({"record": record, "digest": digest}, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return digest


def _file_digest(path: Path) -> str | None:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _start_check(store: Path, base_digest: str, repeats: int, pinned: str | None) -> tuple[int, list[str]]:
    """The index of this check and its raw log names; records the start before any raw log is reused.

    Raw logs are reused only for an interrupted check whose start is in the history (and, with a
    pinned head, covered by it); logs of a check never started are planted (or left by a deleted
    history): VerificationError. An interrupted start after the pin is restarted, its logs set aside."""
    records = read_chain(store, base_digest)
    later = after_pin(records, base_digest, pinned) if pinned is not None else []
    if [r for r in later if r.get("kind", "check") != "started"] or len(later) > 1:
        raise VerificationError("the history has completed checks after the pinned head (pin the head printed by "
                                "the last check)", field="history_head", got=chain_head(records, base_digest),
                                expected=pinned)
    index = 1 + sum(1 for r in records if r.get("kind", "check") == "check")
    names = [f"check-{index:04d}-r{c}.jsonl" for c in range(repeats)]
    last = records[-1] if records else None
    started = last is not None and last.get("kind") == "started" and last["check"] == index
    raw = store / "raw"
    existing = sorted(raw.glob(f"check-{index:04d}-*")) if raw.is_dir() else []
    if started and not later and last.get("raw_logs") == dict.fromkeys(names):
        return index, names  # resume the interrupted check
    if existing and not started:
        raise VerificationError("raw logs of a check that the history never started (planted, or left by a "
                                "removed history); move them away to rerun", field="raw",
                                got=[p.name for p in existing], expected="none")
    for p in existing:  # a started check resumed with other repeats, or a start after the pin: not reused
        aside = raw / "discarded" / f"{p.name}.{time.time_ns()}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        os.replace(p, aside)
    store.mkdir(parents=True, exist_ok=True)
    _append_history(store, {"kind": "started", "check": index, "time": time.time(), "repeats": repeats,
                            "raw_logs": {n: _file_digest(raw / n) for n in names}},
                    chain_head(records, base_digest))
    return index, names


# --- check ---------------------------------------------------------------------------------------


def _verdict(result: ChangeResult, alpha: float, asked: int, usable: int) -> tuple[str, list[str]]:
    reasons: list[str] = []
    if usable == 0:
        return "inconclusive", ["no prompt has both baseline and check answers"]
    if result.p_value <= alpha:
        return "change", [f"combined p = {result.p_value:.3g} <= alpha = {alpha:g}"]
    if asked - usable > MAX_MISSING * asked:
        reasons.append(f"{asked - usable} of {asked} prompts unusable (no answer or a provider fault)")
    if result.min_p_value > alpha:
        reasons.append(f"this design cannot reach alpha: smallest p-value {result.min_p_value:.3g} > {alpha:g} "
                       "(add prompts, baseline repeats or check repeats)")
    if reasons:
        return "inconclusive", reasons
    return "no_change", [f"combined p = {result.p_value:.3g} > alpha = {alpha:g}"]


def _nondeterministic_reason(det: dict[str, Any], prompts: int) -> str:
    return (f"the baseline is non-deterministic: at temperature 0 its repeats part at decisive positions on "
            f"{len(det['prompts'])} of {prompts} prompts (margin up to {det['largest_divergence_margin']:.3g} "
            f"nats, engine noise {det['noise']:.3g}, limit {det['threshold']:.3g}); a provider mixing models into "
            "the baseline makes a later switch look like noise, so it is not used as the null (re-baseline, or "
            "baseline --allow-nondeterministic to accept it)")


def evaluate(baseline_runs: list[list[Run | None]], check_runs: list[list[Run | None]], tolerance: float,
             alpha: float, seed: int = 0, draws: int = 20000, allow_nondeterministic: bool = False) -> dict[str, Any]:
    """The change test on runs (per prompt: baseline repeats, check repeats); missing runs are dropped.

    A baseline whose greedy repeats part beyond engine noise (monitor_stats.baseline_determinism)
    never gives "no_change" unless `allow_nondeterministic`: the verdict is inconclusive instead."""
    det = baseline_determinism([[r for r in per if r is not None] for per in baseline_runs], tolerance)
    rng = np.random.default_rng(seed)
    tests: list[PromptTest] = []
    per_prompt: list[dict[str, Any]] = []
    for j, (base, check) in enumerate(zip(baseline_runs, check_runs, strict=True)):
        b = [r for r in base if r is not None]
        c = [r for r in check if r is not None]
        if len(b) < 2 or not c:
            per_prompt.append({"prompt": j, "problem": f"too few answers (baseline {len(b)}, check {len(c)})"})
            continue
        t = prompt_test(b, c, tolerance, rng)
        tests.append(t)
        per_prompt.append({"prompt": j, "mode": t.mode, "statistic": t.statistic, "p_value": t.p_value,
                           "cross": t.cross, "within": t.within, "labellings": len(t.null_p)})
    result = combine_prompts(tests, draws=draws, seed=seed)
    verdict, reasons = _verdict(result, alpha, len(baseline_runs), len(tests))
    if not det["deterministic"]:
        if allow_nondeterministic:
            reasons.append("WARNING: " + _nondeterministic_reason(det, len(baseline_runs)).split(", so it")[0]
                           + "; accepted as the null at the baseline's request (--allow-nondeterministic)")
        elif verdict == "no_change":
            verdict, reasons = "inconclusive", [_nondeterministic_reason(det, len(baseline_runs))]
        else:
            reasons.append(_nondeterministic_reason(det, len(baseline_runs)))
    modes = sorted({t.mode for t in tests})
    return {"verdict": verdict, "reasons": reasons, "baseline_determinism": det, "statistic": result.statistic, "p_value": result.p_value,
            "min_p_value": result.min_p_value, "alpha": alpha, "prompts_used": len(tests),
            "prompts_asked": len(baseline_runs), "mode": "+".join(modes) or "none",
            "changed_prompts": sum(1 for t in tests if t.statistic > 0 and t.p_value <= 1.0 / len(t.null_p) + 1e-12),
            "per_prompt": per_prompt}


@dataclass(frozen=True)
class CheckOptions:
    """How `audit monitor check` re-asks the baseline's requests (the requests themselves are the baseline's)."""

    repeats: int = 2
    alpha: float = 0.01
    base_url: str | None = None  # overrides the stored (possibly redacted) base URL
    api_key_env: str | None = None  # overrides the stored variable name
    baseline_digest: str | None = None  # fail unless the stored baseline has this digest
    history_head: str | None = None  # fail unless the history contains this head (printed by the previous check)
    timeout: float = 60.0
    max_retries: int = 6
    seed: int = 0  # of the Monte Carlo null

    def __post_init__(self) -> None:
        if not 1 <= self.repeats <= 50:
            raise AuditUsageError("check repeats out of range", field="repeats", got=self.repeats, expected="1..50")
        if not 0 < self.alpha < 1:
            raise AuditUsageError("alpha out of range", field="alpha", got=self.alpha, expected="(0, 1)")

    @classmethod
    def from_cli(cls, **options: Any) -> CheckOptions:
        """From `audit monitor check`'s options (named as the fields)."""
        return cls(**options)


def _check_config(base: dict[str, Any], opts: CheckOptions) -> MonitorConfig:
    """The baseline's requests, sent where the check says (its base URL and key variable win)."""
    if opts.base_url is None and base.get("base_url_redacted"):
        raise AuditUsageError("the stored base URL is redacted; pass --base-url", field="base_url",
                              got=base["base_url"])
    req = base["request"]
    return MonitorConfig(base_url=opts.base_url or base["base_url"], model=base["model"], prompts=base["prompts"],
                         repeats=base["repeats"], max_tokens=int(req["max_tokens"]),
                         top_logprobs=int(req["top_logprobs"]), logprobs=bool(req["logprobs"]),
                         tolerance=float(base["tolerance"]), api_key_env=opts.api_key_env or base.get("api_key_env"),
                         timeout=opts.timeout, max_retries=opts.max_retries)


def _evaluate_rounds(base: dict[str, Any], rounds: list[list[dict[str, Any]]], tolerance: float,
                     opts: CheckOptions) -> dict[str, Any]:
    """The change test of this check's answers (per round, per prompt) against the baseline's runs."""
    prompts, repeats = len(base["prompts"]), len(rounds)
    check_runs = [[Run.from_json(rounds[c][j]["run"]) if "run" in rounds[c][j] else None for c in range(repeats)]
                  for j in range(prompts)]
    problems = [[rounds[c][j]["problem"] for c in range(repeats) if "problem" in rounds[c][j]]
                for j in range(prompts)]
    result = evaluate(base["runs"], check_runs, tolerance, opts.alpha, opts.seed,
                      allow_nondeterministic=base.get("allow_nondeterministic") is True)
    for row, probs in zip(result["per_prompt"], problems, strict=True):
        if probs:
            row["check_problems"] = probs
    return result


def _record_check(store: Path, base: dict[str, Any], result: dict[str, Any], rounds: list[list[dict[str, Any]]],
                  names: list[str]) -> str:
    """Write checks/NNNN.json (with every answer) and append the check to the history; the new head."""
    (store / "checks").mkdir(exist_ok=True)
    full = {**result, "answers": [list(per) for per in zip(*rounds, strict=True)]}
    _write_atomic(store / "checks" / f"{result['check']:04d}.json", json.dumps(full, indent=1))
    record = {k: result[k] for k in ("check", "time", "verdict", "statistic", "p_value", "alpha", "prompts_used",
                                     "prompts_asked", "changed_prompts", "mode", "repeats")}
    record["kind"] = "check"
    record["result_digest"] = _digest(CHECK_FORMAT, full)
    record["raw_digests"] = {n: _file_digest(store / "raw" / n) for n in names}
    prev = chain_head(read_chain(store, base["digest"]), base["digest"])
    return _append_history(store, record, prev)


def run_check(store: Path, options: CheckOptions | None = None, *, transport: Any = None) -> dict[str, Any]:
    """Re-send the baseline's requests `options.repeats` times, test for change, append to history.

    `options.history_head` pins the history (the head printed by the previous check): a truncated,
    deleted or replaced history is a VerificationError before any query."""
    opts = options or CheckOptions()
    base = load_baseline(store, opts.baseline_digest)
    cfg = _check_config(base, opts)
    index, names = _start_check(store, base["digest"], opts.repeats, opts.history_head)
    rounds = [_query(cfg, store / "raw" / name, transport) for name in names]
    result = _evaluate_rounds(base, rounds, cfg.tolerance, opts)
    result.update({"format": CHECK_FORMAT, "check": index, "time": time.time(), "repeats": opts.repeats,
                   "baseline_repeats": base["repeats"], "baseline_digest": base["digest"],
                   "base_url": redact_url(cfg.base_url), "model": cfg.model, "tolerance": cfg.tolerance})
    result["history_digest"] = result["history_head"] = _record_check(store, base, result, rounds, names)
    return result


def history_table(records: list[dict[str, Any]]) -> str:
    """A plain-text timeline of checks."""
    head = f"{'#':>4}  {'time (UTC)':<19}  {'verdict':<12}  {'fisher':>8}  {'p-value':>9}  {'prompts':>7}  changed"
    lines = [head]
    for r in records:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["time"]))
        lines.append(f"{r['check']:>4}  {when:<19}  {r['verdict']:<12}  {r['statistic']:>8.2f}  {r['p_value']:>9.3g}  "
                     f"{r['prompts_used']:>3}/{r['prompts_asked']:<3}  {r['changed_prompts']}")
    return "\n".join(lines)
