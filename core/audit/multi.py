"""Several providers in one report, a cost budget, and the machine-readable verdict for CI.

A thin layer over `run_audit`: every provider is audited on the SAME prompts with the same
configuration into `OUT/<name>/` (each a complete, resumable audit directory), sharing one loaded
reference and one calibration (`OUT/calibration.json`); `OUT/report.json` and `OUT/report.html`
put the per-provider verdicts side by side.

Cost budget: before any query, the worst-case cost of the whole plan (each request's reference
prompt tokens + max_tokens, times the provider's price per 1k tokens) decides how many prompts
every provider can be asked (the same number for all); during the run a shared `Budget` refuses any
new query whose worst case would exceed `max_cost`, charging the provider's reported `usage`
(else the worst case). The report says when and why it stopped.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..models import LoadedModel
from . import AuditUsageError
from .reference import load_audit_reference
from .run import AuditConfig, load_prompts, obtain_calibration, run_audit

VERDICT_FORMAT = "specguard-audit-verdict/v1"
MULTI_FORMAT = "specguard-audit-multi-report/v1"
#: exit status of `audit run` per verdict (2: bad usage; other errors keep their own codes)
EXIT_CODES = {"consistent": 0, "substituted": 4, "inconclusive": 1}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SEVERITY = {"substituted": 2, "inconclusive": 1, "consistent": 0}


@dataclass
class Provider:
    """One endpoint to audit: its name (also its sub-directory), URL, price and API key variable."""

    name: str
    base_url: str
    price_per_1k: float | None = None
    api_key_env: str | None = None


def parse_provider(spec: str) -> tuple[str, str]:
    """`NAME=URL` -> (name, url); the name must be a safe directory name."""
    name, sep, url = spec.partition("=")
    if not sep or not _NAME.match(name) or not url.startswith(("http://", "https://")):
        raise AuditUsageError("bad --provider", field="provider", got=spec[:120],
                              expected="NAME=URL, NAME of letters, digits, _ . - (<= 64), URL http(s)://")
    return name, url


def parse_named(values: tuple[str, ...] | list[str], what: str, convert=str) -> tuple[Any, dict[str, Any]]:
    """Options given once for all (`VALUE`) or per provider (`NAME=VALUE`): (default, {name: value})."""
    default, per = None, {}
    for v in values:
        name, sep, rest = v.partition("=")
        try:
            if sep and _NAME.match(name):
                per[name] = convert(rest)
            else:
                default = convert(v)
        except ValueError as exc:
            raise AuditUsageError(f"bad {what}", field=what, got=v, expected="VALUE or NAME=VALUE") from exc
    return default, per


# --- cost budget -----------------------------------------------------------------------------------


@dataclass
class Budget:
    """Money left for queries, shared by every provider of a run."""

    max_cost: float
    spent: float = 0.0
    tokens: int = 0
    refused: int = 0
    per_provider: dict[str, dict[str, float]] = field(default_factory=dict)

    def for_provider(self, name: str, price_per_1k: float, reference: LoadedModel) -> ProviderBudget:
        self.per_provider.setdefault(name, {"spent": 0.0, "tokens": 0, "refused": 0, "price_per_1k_tokens": price_per_1k})
        return ProviderBudget(self, name, price_per_1k, reference)

    @property
    def stopped(self) -> bool:
        return self.refused > 0

    def to_json(self) -> dict[str, Any]:
        return {"max_cost": self.max_cost, "spent": round(self.spent, 9), "tokens": self.tokens, "refused": self.refused,
                "stopped": self.stopped, "per_provider": self.per_provider}


def worst_case_tokens(reference: LoadedModel, body: dict[str, Any]) -> int:
    """Reference prompt tokens of the request's messages + its max_tokens (an upper bound on the answer)."""
    msgs = [{"role": str(m.get("role")), "content": str(m.get("content"))} for m in body.get("messages", [])]
    return len(reference.encode_chat(msgs)) + int(body.get("max_tokens") or 0)


@dataclass
class ProviderBudget:
    """The hook `run_audit` calls: `reserve(body)` before a new query, `charge(body, answer)` after."""

    shared: Budget
    name: str
    price_per_1k: float
    reference: LoadedModel

    def _cost(self, tokens: int) -> float:
        return tokens * self.price_per_1k / 1000.0

    def reserve(self, body: dict[str, Any]) -> bool:
        if self.shared.spent + self._cost(worst_case_tokens(self.reference, body)) > self.shared.max_cost + 1e-12:
            self.shared.refused += 1
            self.shared.per_provider[self.name]["refused"] += 1
            return False
        return True

    def charge(self, body: dict[str, Any], answer: dict[str, Any] | None) -> None:
        usage = answer.get("usage") if isinstance(answer, dict) else None
        tokens = usage.get("total_tokens") if isinstance(usage, dict) else None
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0 or tokens > 10**9:
            tokens = worst_case_tokens(self.reference, body)  # no (or no credible) usage: charge the worst case
        cost = self._cost(tokens)
        self.shared.spent += cost
        self.shared.tokens += tokens
        mine = self.shared.per_provider[self.name]
        mine["spent"] = round(mine["spent"] + cost, 9)
        mine["tokens"] += tokens

    def to_json(self) -> dict[str, Any]:
        return {"max_cost": self.shared.max_cost, "price_per_1k_tokens": self.price_per_1k,
                **self.shared.per_provider[self.name], "shared_spent": round(self.shared.spent, 9)}


def requests_per_prompt_plan(cfg: AuditConfig, n: int) -> list[int]:
    """How many requests each of the first n prompts costs (greedy + seeded + RUT + MMD)."""
    counts = [1] * n
    for i in range(min(cfg.seeded_prompts, n)):
        counts[i] += 1
    for i in range(min(cfg.rut_prompts, n)):
        counts[i] += 1
    if cfg.mmd_samples >= 2:
        for i in range(min(cfg.mmd_prompts, n)):
            counts[i] += cfg.mmd_samples
    return counts


def plan_prompts(cfg: AuditConfig, prompt_tokens: list[int], prices: list[float], max_cost: float) -> tuple[int, float]:
    """The most prompts (<= cfg.budget) every provider can be asked within max_cost, and that plan's worst case."""
    best, best_cost = 0, 0.0
    for n in range(1, cfg.budget + 1):
        per = requests_per_prompt_plan(cfg, n)
        cost = sum(c * (prompt_tokens[i] + cfg.max_tokens) for i, c in enumerate(per)) * sum(prices) / 1000.0
        if cost > max_cost + 1e-12:
            break
        best, best_cost = n, cost
    return best, best_cost


def shrink(cfg: AuditConfig, n: int) -> AuditConfig:
    """The configuration asking only the first n prompts."""
    return replace(cfg, budget=n, seeded_prompts=min(cfg.seeded_prompts, n), rut_prompts=min(cfg.rut_prompts, n),
                   mmd_prompts=min(cfg.mmd_prompts, n), calibration_prompts=min(cfg.calibration_prompts, max(n, 1)))


# --- verdict JSON ------------------------------------------------------------------------------------


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def provider_verdict(name: str, report: dict[str, Any], path: Path | None) -> dict[str, Any]:
    """One provider's entry of the verdict JSON (see docs/audit.md, "Exit codes and JSON")."""
    return {
        "name": name,
        "base_url": report["provider"]["base_url"],
        "model": report["provider"]["model"],
        "verdict": report["verdict"],
        "exit_code": EXIT_CODES.get(report["verdict"], 1),
        "reasons": report["reasons"],
        "rejected": report["rejected"],
        "tests": [{k: _finite(t[k]) for k in ("name", "statistic", "p_value", "samples", "mde", "declared_effect",
                                               "powered")} for t in report["tests"]],
        "prompts": report["prompts"],
        "tokens": {k: _finite(v) for k, v in report["tokens"].items()},
        "report": str(path) if path else None,
    }


def overall(verdicts: list[str]) -> str:
    """The worst verdict: substituted > inconclusive > consistent (no provider: inconclusive)."""
    if not verdicts:
        return "inconclusive"
    return max(verdicts, key=lambda v: _SEVERITY.get(v, 1))


def verdict_json(entries: list[dict[str, Any]], alpha: float, budget: dict[str, Any] | None = None) -> dict[str, Any]:
    """The versioned machine-readable verdict `audit run --json` prints."""
    verdict = overall([e["verdict"] for e in entries])
    return {"format": VERDICT_FORMAT, "verdict": verdict, "exit_code": EXIT_CODES.get(verdict, 1), "alpha": alpha,
            "providers": entries, "budget": budget}


# --- several providers -------------------------------------------------------------------------------


def run_multi(providers: list[Provider], template: AuditConfig, out: Path, max_cost: float | None = None,
              reference: LoadedModel | None = None) -> dict[str, Any]:
    """Audit every provider on the same prompts into OUT/<name>/ and write one combined report."""
    from .report import write_multi_reports

    names = [p.name for p in providers]
    if not providers or len(set(names)) != len(names):
        raise AuditUsageError("provider names must be given and unique", field="provider", got=names)
    out.mkdir(parents=True, exist_ok=True)
    reference = reference or load_audit_reference(template)
    prompts = load_prompts(template.prompts_file, template.budget)
    prompt_tokens = [len(reference.encode_chat([{"role": "user", "content": p}])) for p in prompts]
    cfg = template
    budget = None
    plan: dict[str, Any] = {"requested_prompts": template.budget, "planned_prompts": template.budget}
    if max_cost is not None:
        missing = [p.name for p in providers if p.price_per_1k is None]
        if missing or max_cost < 0:
            raise AuditUsageError("--max-cost needs a price per 1k tokens for every provider", field="price_per_1k_tokens",
                                  got=missing or max_cost, expected="--price-per-1k-tokens P or --price NAME=P")
        n, worst = plan_prompts(template, prompt_tokens, [float(p.price_per_1k or 0) for p in providers], max_cost)
        if n == 0:
            raise AuditUsageError("the cost budget does not cover one prompt for every provider", field="max_cost",
                                  got=max_cost, expected=f"> {plan_prompts(replace(template, budget=1), prompt_tokens, [float(p.price_per_1k or 0) for p in providers], float('inf'))[1]:.6g}")
        cfg = shrink(template, n)
        plan.update(planned_prompts=n, worst_case_cost=round(worst, 9))
        budget = Budget(max_cost)
    if not cfg.calibration:
        ids = [reference.encode_chat([{"role": "user", "content": p}]) for p in prompts[: cfg.budget]]
        obtain_calibration(cfg, reference, ids, out)  # measured once, saved as OUT/calibration.json
        cfg = replace(cfg, calibration=str(out / "calibration.json"))
    reports: dict[str, dict[str, Any]] = {}
    from tqdm import tqdm

    bar = tqdm(total=len(providers), desc="providers", file=sys.stderr, disable=None, leave=False)
    try:
        for p in providers:
            pcfg = replace(cfg, base_url=p.base_url, api_key_env=p.api_key_env or cfg.api_key_env)
            pb = budget.for_provider(p.name, float(p.price_per_1k or 0), reference) if budget else None
            reports[p.name] = run_audit(pcfg, out / p.name, reference=reference, budget=pb)
            bar.update(1)
    finally:
        bar.close()
    budget_json = None
    if budget is not None:
        budget_json = {**budget.to_json(), **plan}
        budget_json["reason"] = _budget_reason(plan, budget)
    entries = [provider_verdict(p.name, reports[p.name], out / p.name / "report.json") for p in providers]
    combined = {
        **verdict_json(entries, cfg.alpha, budget_json),
        "format": MULTI_FORMAT,
        "reference": {"name": reference.name, "digest": reference.digest},
        "config": {**asdict(cfg), "base_url": None},
        "prompts": plan,
        "reports": {p.name: reports[p.name] for p in providers},
    }
    write_multi_reports(combined, out)
    return combined


def _budget_reason(plan: dict[str, Any], budget: Budget) -> str:
    parts = []
    if plan["planned_prompts"] < plan["requested_prompts"]:
        parts.append(f"asked {plan['planned_prompts']} of {plan['requested_prompts']} prompts per provider so that the "
                     f"worst case ({plan.get('worst_case_cost', 0):.6g}) stays within --max-cost {budget.max_cost:g}")
    if budget.refused:
        parts.append(f"stopped before exceeding --max-cost: {budget.refused} queries not sent")
    return "; ".join(parts) or f"within budget: spent {budget.spent:.6g} of {budget.max_cost:g}"


def run_single_with_budget(cfg: AuditConfig, out: Path, price_per_1k: float, max_cost: float,
                           reference: LoadedModel | None = None) -> dict[str, Any]:
    """One provider under a cost budget (the same planning and guard as `run_multi`)."""
    reference = reference or load_audit_reference(cfg)
    prompts = load_prompts(cfg.prompts_file, cfg.budget)
    tokens = [len(reference.encode_chat([{"role": "user", "content": p}])) for p in prompts]
    n, worst = plan_prompts(cfg, tokens, [price_per_1k], max_cost)
    if n == 0:
        raise AuditUsageError("the cost budget does not cover one prompt", field="max_cost", got=max_cost)
    budget = Budget(max_cost)
    report = run_audit(shrink(cfg, n), out, reference=reference, budget=budget.for_provider("provider", price_per_1k,
                                                                                              reference))
    plan = {"requested_prompts": cfg.budget, "planned_prompts": n, "worst_case_cost": round(worst, 9)}
    report["budget"] = {**report.get("budget", {}), **plan, "stopped": budget.stopped,
                        "reason": _budget_reason(plan, budget)}
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    return report
