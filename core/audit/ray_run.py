"""`specguard audit run --ray`: the provider queries and the reference re-scoring as Ray Data stages.

The local run (`specguard.audit.run.run_audit`) answers and scores one prompt after the other.
Here the same per-prompt work runs on a Ray cluster as a streaming pipeline of two actor pools:

    prompts ──▶ ProviderQuery (actors: one HTTP client each) ──▶ ReferenceScorer (actors: the
    reference loaded ONCE per actor) ──▶ driver: raw.jsonl, report

and `run_audit(stage=...)` builds the report from the results exactly as the local run does (the
same `prompt_request`, `_answer_parts`, `score_answer`, statistics and verdict code). Same inputs,
same report: the same answers are reused from `raw.jsonl` (resume), each new attempt is appended to
`raw.jsonl` by the driver as its row arrives (the actors write no file, so they may run on other
machines), and the client statistics count the same attempts, retries, failures and reuses.

What travels through Ray: prompts, request bodies, answers and scores. What does not: the provider
API key (each query actor reads the environment variable named by `--api-key-env` in its own
process; on a cluster set it where `ray start` runs) and the reference (each scorer loads
`cfg.reference` from its own node, and its digest must equal the driver's, else AuditError).

Bit-identical statistics need the scorers to use the driver's torch thread count (fp32 sums depend
on it by ~1e-6); the verdict does not. Calibration, when measured, and the text-only MMD test still
run on the driver.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..web import http
from . import AuditError, AuditUsageError
from .client import ENDPOINTS, ClientOptions, ProviderClient, request_key

# `.run` (torch, transformers) is imported where it is used: the query actors stay light

log = logging.getLogger("specguard.audit.ray_run")


@dataclass(frozen=True)
class RayAuditOptions:
    """How the audit's stages run on Ray."""

    scorer_actors: int = 0  # reference copies, one per actor (0: the cluster's CPUs / cpus_per_scorer)
    query_actors: int = 2  # concurrent provider clients
    cpus_per_scorer: float = 1.0  # Ray CPUs reserved per scorer actor
    threads: int | None = None  # torch threads per scorer (default: cpus_per_scorer, at least 1)
    address: str | None = None  # Ray cluster address (default: RAY_ADDRESS, else a private local cluster)

    def __post_init__(self) -> None:
        if self.query_actors < 1 or self.scorer_actors < 0:
            raise AuditUsageError("actor counts must be >= 1 (scorers: 0 = one per cpus_per_scorer CPUs)",
                                  field="actors", got=(self.query_actors, self.scorer_actors))
        if self.cpus_per_scorer <= 0:
            raise AuditUsageError("cpus_per_scorer must be > 0", field="cpus_per_scorer", got=self.cpus_per_scorer)

    @property
    def scorer_threads(self) -> int:
        return self.threads or max(1, int(self.cpus_per_scorer))

    def scorers(self, cluster_cpus: float) -> int:
        """The scorer pool size: as given, or as many as the cluster's CPUs hold."""
        return self.scorer_actors or max(1, int(cluster_cpus // self.cpus_per_scorer))


class _RecordingClient(ProviderClient):
    """A ProviderClient that keeps its raw-log records in memory (the driver writes raw.jsonl)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, log_path=Path(os.devnull), **kwargs)
        self.records: list[dict[str, Any]] = []

    def _append(self, record: dict[str, Any]) -> None:
        self.records.append(record)


class ProviderQuery:
    """Ray Data stage 1 (actor pool): send one prompt's request, unless its answer is already known.

    Built from `query_actor_kwargs` alone: the actor's process does not share the driver's trust
    (`--cacert`, a policy's [tls]), so the driver's CA for the provider comes as PEM text."""

    def __init__(self, base_url: str, model: str, options: dict[str, Any], cacert_pem: str | None = None) -> None:
        with _cacert_file(cacert_pem) as cacert:
            # the client loads the CA when it is made: the file is not needed afterwards
            self.client = _RecordingClient(base_url, model, options=ClientOptions(**options, cacert=cacert))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        answers, records, stats = [], [], []
        for body_json, cached in zip(batch["body"], batch["cached"], strict=True):
            if cached:
                answers.append(cached)
                records.append("[]")
                stats.append("{}")
                continue
            self.client.records = []
            self.client.stats = {"attempts": 0, "retries": 0, "failures": 0, "reused": 0, "http_errors": {}}
            ans = self.client.chat(json.loads(body_json))
            answers.append(json.dumps(ans) if ans is not None else "")
            records.append(json.dumps(self.client.records))
            stats.append(json.dumps(self.client.stats))
        return {**batch, "answer": answers, "records": records, "stats": stats}


class ReferenceScorer:
    """Ray Data stage 2 (actor pool): the reference, loaded once per actor, re-scores each answer."""

    def __init__(self, cfg: dict[str, Any], digest: str, threads: int) -> None:
        import torch

        from .reference import load_audit_reference
        from .run import AuditConfig
        from .tokens import TokenMap

        torch.set_num_threads(threads)
        self.cfg = AuditConfig(**cfg)
        self.reference = load_audit_reference(self.cfg)
        if self.reference.digest != digest:
            raise AuditError("the reference on this Ray node is not the driver's", field="reference",
                             got=self.reference.digest, expected=digest)
        self.tmap = TokenMap(self.reference.tokenizer, self.reference.vocab_size)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from .run import _answer_parts, score_answer

        scored_out = []
        for body_json, answer, pids in zip(batch["body"], batch["answer"], batch["prompt_ids"], strict=True):
            ans = json.loads(answer) if answer else None
            content, lpc, _finish, problem = _answer_parts(ans, json.loads(body_json), self.cfg.endpoint)
            if problem:
                scored_out.append("")
                continue
            scored = score_answer(self.cfg, self.reference, self.tmap, json.loads(pids), content, lpc)
            scored_out.append(json.dumps(scored.to_json()))
        return {**batch, "scored": scored_out}


def _add_stats(total: dict[str, Any], part: dict[str, Any]) -> None:
    for name in ("attempts", "retries", "failures", "reused"):
        total[name] += part.get(name, 0)
    for code, n in part.get("http_errors", {}).items():
        total["http_errors"][code] = total["http_errors"].get(code, 0) + n


def ray_stage(options: RayAuditOptions) -> Callable[..., list[Any]]:
    """The `stage` for `run_audit`: answers and scores every prompt on Ray (see the module docstring)."""

    def stage(cfg: Any, client: ProviderClient, reference: Any, prompts: list[str],
              prompt_ids: list[list[int]]) -> list[Any]:
        plan = RequestPlan.of(cfg, client, prompts, prompt_ids)
        if not plan.rows:
            return []
        rows = _pipeline(plan.rows, cfg, reference, options)
        done = _collect(rows, client, plan.keys)
        return _staged_in_prompt_order(cfg, client, reference, prompt_ids, plan, done)

    return stage


@dataclass
class RequestPlan:
    """The distinct greedy requests of a run: each is sent once, at its first prompt (as run_audit)."""

    bodies: list[dict[str, Any]]  # per prompt
    keys: list[str]  # per prompt: the request key (raw-log and cache key)
    first: dict[str, int]  # request key -> the prompt that sends it
    cached_at_start: set[str]  # keys answered in raw.jsonl before this run (resume)
    rows: list[dict[str, Any]]  # the Ray Data rows: one per distinct request

    @classmethod
    def of(cls, cfg: Any, client: ProviderClient, prompts: list[str], prompt_ids: list[list[int]]) -> RequestPlan:
        from .run import prompt_request

        bodies = [prompt_request(cfg, text) for text in prompts]
        plan = cls(bodies, [request_key({"model": client.model, **b}) for b in bodies], {}, set(), [])
        for i, (key, body) in enumerate(zip(plan.keys, bodies, strict=True)):
            if key in plan.first:
                continue
            plan.first[key] = i
            cached = client.cache.get(key)
            if cached is not None:
                plan.cached_at_start.add(key)
            plan.rows.append({"index": i, "body": json.dumps(body), "prompt_ids": json.dumps(prompt_ids[i]),
                              "cached": json.dumps(cached) if cached is not None else ""})
        return plan


def _init_ray(options: RayAuditOptions) -> None:
    import ray

    if not ray.is_initialized():
        if options.address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=options.address)
        else:  # a private cluster on loopback, ended with the audit (ray.shutdown at exit)
            ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False  # the audit shows its own


def query_actor_kwargs(cfg: Any) -> dict[str, Any]:
    """The constructor arguments of the ProviderQuery actors: what their provider client needs, with the
    CA this process trusts for the provider's URL (`--cacert`, a policy's per-URL CA) as PEM text, so
    that a worker on another machine needs no copy of the file. None: the system CAs."""
    options = {"api_key_env": cfg.api_key_env, "endpoint": cfg.endpoint, "timeout": cfg.timeout,
               "max_retries": cfg.max_retries}
    cafile = http.cacert_for(cfg.base_url.rstrip("/") + ENDPOINTS[cfg.endpoint])
    return {"base_url": cfg.base_url, "model": cfg.model, "options": options,
            "cacert_pem": Path(cafile).read_text(encoding="latin-1") if cafile else None}  # byte-exact


@contextmanager
def _cacert_file(pem: str | None) -> Iterator[str | None]:
    """`pem` as a file for the TLS context of this process (removed on exit), or None (the system CAs)."""
    if pem is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="specguard-ca-") as folder:
        path = Path(folder) / "ca.pem"
        path.write_text(pem, encoding="latin-1")
        yield str(path)


def _pipeline(rows: list[dict[str, Any]], cfg: Any, reference: Any, options: RayAuditOptions) -> Iterator[dict[str, Any]]:
    """The two actor pools as a streaming Ray Data pipeline; its rows as they arrive."""
    import ray

    _init_ray(options)
    scorers = options.scorers(ray.cluster_resources().get("CPU", 1))
    log.info("audit on Ray: %d query actors, %d reference scorers (%s CPUs, %d threads each)",
             options.query_actors, scorers, options.cpus_per_scorer, options.scorer_threads)
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))  # one block per request: spread over the pool
    ds = ds.map_batches(ProviderQuery, batch_size=1, compute=ray.data.ActorPoolStrategy(size=options.query_actors),
                        num_cpus=0, fn_constructor_kwargs=query_actor_kwargs(cfg))
    ds = ds.map_batches(ReferenceScorer, batch_size=1,
                        compute=ray.data.ActorPoolStrategy(size=scorers),
                        num_cpus=options.cpus_per_scorer, fn_constructor_kwargs={
                            "cfg": _config_json(cfg), "digest": reference.digest,
                            "threads": options.scorer_threads})
    return ds.iter_rows()


def _collect(rows: Iterator[dict[str, Any]], client: ProviderClient, keys: list[str]) -> dict[int, Any]:
    """Each row's attempts logged (as it arrives), its statistics counted, its answer cached: {prompt: StagedPrompt}."""
    from .run import ScoredAnswer, StagedPrompt

    done: dict[int, StagedPrompt] = {}
    for row in rows:
        for record in json.loads(row["records"]):
            client._append(record)
        _add_stats(client.stats, json.loads(row["stats"]))
        answer = json.loads(row["answer"]) if row["answer"] else None
        if answer is not None:
            client.cache[keys[int(row["index"])]] = answer
        scored = ScoredAnswer.from_json(json.loads(row["scored"])) if row["scored"] else None
        done[int(row["index"])] = StagedPrompt(answer, scored)
    return done


def _staged_in_prompt_order(cfg: Any, client: ProviderClient, reference: Any, prompt_ids: list[list[int]],
                            plan: RequestPlan, done: dict[int, Any]) -> list[Any]:
    """One StagedPrompt per prompt; repeats of a request are reused or asked again exactly as run_audit does."""
    from .run import StagedPrompt, _answer_parts, score_answer
    from .tokens import TokenMap

    staged: list[Any] = []
    answered: dict[str, Any] = {}  # the latest answered StagedPrompt per request
    tmap = None
    for i, key in enumerate(plan.keys):
        if plan.first[key] == i:
            result = done[i]
            if key in plan.cached_at_start:
                client.stats["reused"] += 1
        elif key in answered:  # a repeat of an answered request: reused, as run_audit
            client.stats["reused"] += 1
            result = answered[key]
        else:  # a repeat of a request that got no answer: run_audit asks again, and so does this (here)
            ans = client.chat(plan.bodies[i])
            content, lpc, _f, problem = _answer_parts(ans, plan.bodies[i], cfg.endpoint)
            tmap = tmap or TokenMap(reference.tokenizer, reference.vocab_size)
            scored = None if problem else score_answer(cfg, reference, tmap, prompt_ids[i], content, lpc)
            result = StagedPrompt(ans, scored)
        if result.answer is not None:
            answered[key] = result
        staged.append(result)
    return staged


def _config_json(cfg: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(cfg)


def run_audit_ray(cfg: Any, out: Path, options: RayAuditOptions | None = None,
                  reference: Any = None) -> dict[str, Any]:
    """`run_audit` (an AuditConfig) with the per-prompt work on Ray; the same report for the same inputs."""
    from .run import run_audit

    _require_ray()
    return run_audit(cfg, out, reference=reference, stage=ray_stage(options or RayAuditOptions()))


def _require_ray() -> None:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise AuditUsageError("Ray is not installed: pip install 'specguard[ray]'", field="--ray",
                              got=str(exc)[:120], expected="ray[serve,data]") from exc


__all__ = ["ProviderQuery", "RayAuditOptions", "ReferenceScorer", "ray_stage", "run_audit_ray"]
