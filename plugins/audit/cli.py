"""`specguard audit run | report | simulate | calibrate | monitor`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from specguard.outbound_args import cacert_option


@click.group(name="audit")
def audit_group() -> None:
    """Check whether an OpenAI-compatible provider serves the model it claims."""


def _echo_summary(report: dict, out: Path) -> None:
    """What a person reads after `audit run` / `audit report`: verdict, headline, reasons, where the report is."""
    click.echo(f"verdict: {report['verdict']}")
    if report.get("headline"):
        click.echo(report["headline"])
    for reason in report["reasons"]:
        click.echo(f"  - {reason}")
    click.echo(f"report: {out / 'report.html'} (JSON: {out / 'report.json'}; --json prints the verdict JSON)")


def _print_json(data: dict) -> None:
    from specguard.audit.multi import _finite

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return _finite(x)

    click.echo(json.dumps(clean(data), indent=1, allow_nan=False))


def _json_object(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, Any] | None:
    """--extra-body: a JSON object (strict: no NaN, no duplicate keys), else a usage error naming the option."""
    from specguard.attest.jsonio import loads_strict
    from specguard.errors import ParseError

    if not value:
        return None
    try:
        parsed = loads_strict(value, "--extra-body")
    except ParseError as exc:
        raise click.BadParameter(f"not JSON: {exc.summary()}", param_hint="--extra-body") from exc
    if not isinstance(parsed, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--extra-body")
    return parsed


@audit_group.command(name="run")
@cacert_option
@click.option("--base-url", default=None, help="Provider base URL, e.g. http://127.0.0.1:8000/v1 (one provider).")
@click.option("--provider", "providers", multiple=True,
              help="NAME=URL; repeat to audit several providers on the same prompts into OUT/NAME/ and one report.")
@click.option("--model", "model_name", required=True, help="Model name the provider claims to serve.")
@click.option("--reference", required=True, help="Reference copy of the claimed model (model reference).")
@click.option("--reference-runtime", type=click.Choice(["auto", "torch", "llamacpp"]), default="auto", show_default=True,
              help="Runtime scoring the reference: auto = llama.cpp on a GGUF as is, torch = its fp32 torch copy.")
@click.option("--api-key-env", "api_key_envs", multiple=True,
              help="Environment variable holding the API key (never written); NAME=VAR for one provider.")
@click.option("--prompts", "prompts_file", default=None, help="JSONL prompts (prompt/text/turns).")
@click.option("--budget", type=int, default=8, show_default=True, help="Prompts to send.")
@click.option("--max-tokens", type=int, default=32, show_default=True,
              help="Tokens per answer, up to the model context (power per budget is in the report).")
@click.option("--alpha", type=float, default=0.01, show_default=True,
              help="False-alarm rate: a test rejects at this level after Holm's correction.")
@click.option("--top-logprobs", type=int, default=5, show_default=True,
              help="Alternatives (top_logprobs) requested per answer token.")
@click.option("--honest-class", default="auto", show_default=True,
              type=click.Choice(["auto", "cross-engine", "bf16", "fp32"]),
              help="auto = cross-engine when calibrated (the provider's engine is unknown); bf16/fp32 = same engine.")
@click.option("--endpoint", type=click.Choice(["chat", "completions"]), default="chat", show_default=True,
              help="chat: /chat/completions; completions: the legacy /completions with the prompt as raw text.")
@click.option("--extra-body", default=None, callback=_json_object,
              help='JSON object merged into every request, e.g. \'{"repeat_penalty": 1.0}\' for llama.cpp servers.')
@click.option("--calibration", default=None, help="Calibration JSON to use instead of measuring one.")
@click.option("--calibration-prompts", type=int, default=8, show_default=True,
              help="Audit prompts to measure a calibration on when none is given, saved or committed.")
@click.option("--margin", type=float, default=1.5, show_default=True, help="Safety factor on the honest noise.")
@click.option("--min-effect-logprob", type=float, default=0.1, show_default=True,
              help="Logprob shift (nats per token, beyond the honest noise) that must be powered for consistent.")
@click.option("--min-effect-tokens", type=float, default=0.05, show_default=True,
              help="Share of decisive tokens disagreeing that must be powered for consistent.")
@click.option("--mmd-samples", type=int, default=0, show_default=True, help="Samples per prompt for the text-only MMD test.")
@click.option("--mmd-prompts", type=int, default=4, show_default=True,
              help="Prompts for the text-only MMD test (with --mmd-samples >= 2).")
@click.option("--text-only", is_flag=True, help="Do not ask for logprobs (audit as a text-only client).")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Hard deadline in seconds for each request, retries included.")
@click.option("--max-retries", type=int, default=6, show_default=True,
              help="Retries per request on 408/409/425/429/5xx, timeouts and connection errors.")
@click.option("--seeded", "seeded_prompts", type=int, default=0, show_default=True,
              help="Prompts for the seeded-exact test (providers implementing specguard's seeded sampling).")
@click.option("--rut", "rut_prompts", type=int, default=0, show_default=True,
              help="Prompts for the rank-based uniformity test (one sampled answer each; any provider).")
@click.option("--rut-samples", type=int, default=15, show_default=True, help="Reference samples per RUT prompt.")
@click.option("--sample-temperature", type=float, default=1.0, show_default=True,
              help="Temperature of the sampled requests (seeded and RUT tests).")
@click.option("--sample-top-p", type=float, default=1.0, show_default=True,
              help="top_p of the sampled requests (seeded and RUT tests).")
@click.option("--sample-top-k", type=int, default=0, show_default=True, help="Sent (as top_k) only when > 0.")
@click.option("--sample-seed", type=int, default=0, show_default=True,
              help="Secret from which the sampled requests' seeds are derived; choose your own.")
@click.option("--max-cost", type=float, default=None, help="Stop before spending more than this (needs prices).")
@click.option("--price-per-1k-tokens", "prices", multiple=True,
              help="Price per 1000 tokens (prompt + answer), for all providers or NAME=PRICE for one.")
@click.option("--json", "as_json", is_flag=True, help="Print the versioned verdict JSON (docs/audit.md).")
@click.option("--out", "out_dir", default="audit-out", show_default=True,
              help="Directory for the raw log, calibration and reports; rerun with it to resume.")
@click.option("--ray", "ray_scorers", type=click.IntRange(0), is_flag=False, flag_value=0, default=None,
              metavar="[N]", help="Run the queries and the re-scoring as Ray Data stages with N reference actors "
                                  "(default: one per CPU of the cluster; RAY_ADDRESS; docs/scaling.md).")
def run_command(providers: tuple[str, ...], api_key_envs: tuple[str, ...], prices: tuple[str, ...],
                max_cost: float | None, as_json: bool, out_dir: str, ray_scorers: int | None, **options: Any) -> None:
    """Audit a provider (or several); rerun the same command to resume.

    Exit 0 consistent, 4 substituted, 1 inconclusive (several providers: the worst), 2 bad usage."""
    from specguard.audit.multi import EXIT_CODES, parse_named
    from specguard.audit.run import AuditConfig

    _check_targets(options["base_url"], providers, ray_scorers, max_cost)
    key_default, key_per = parse_named(api_key_envs, "api_key_env")
    price_default, price_per = _parse_prices(prices)
    cfg = AuditConfig.from_cli(api_key_env=key_default, **options)
    out = Path(out_dir)
    if providers:
        result = _run_providers(cfg, out, providers, key_per, (price_default, price_per), max_cost)
        _echo_providers(result, out, as_json)
    else:
        report, result = _run_one(cfg, out, price_per.get("provider", price_default), max_cost, ray_scorers)
        if as_json:
            _print_json(result)
        else:
            _echo_summary(report, out)
    raise SystemExit(EXIT_CODES.get(result["verdict"], 1))


def _check_targets(base_url: str | None, providers: tuple[str, ...], ray_scorers: int | None,
                   max_cost: float | None) -> None:
    from specguard.audit import AuditUsageError

    if bool(base_url) == bool(providers):
        raise AuditUsageError("give either --base-url or one or more --provider NAME=URL", field="base_url",
                              got=f"base_url={base_url!r}, providers={len(providers)}")
    if ray_scorers is not None and (providers or max_cost is not None):
        raise AuditUsageError("--ray runs one provider without a cost budget", field="ray",
                              got="with --provider/--max-cost", expected="--base-url only")


def _parse_prices(prices: tuple[str, ...]) -> tuple[float | None, dict[str, float]]:
    from specguard.audit import AuditUsageError
    from specguard.audit.multi import parse_named

    price_default, price_per = parse_named(prices, "price_per_1k_tokens", float)
    for price in [price_default, *price_per.values()]:
        if price is not None and not (price >= 0 and price != float("inf")):
            raise AuditUsageError("bad price", field="price_per_1k_tokens", got=price, expected="a number >= 0")
    return price_default, price_per


def _run_providers(cfg: Any, out: Path, providers: tuple[str, ...], key_per: dict[str, str],
                   prices: tuple[float | None, dict[str, float]], max_cost: float | None) -> dict[str, Any]:
    """Several providers on the same prompts: the combined verdict JSON."""
    from specguard.audit.multi import Provider, parse_provider, run_multi

    price_default, price_per = prices
    plist = [Provider(n, u, price_per.get(n, price_default), key_per.get(n)) for n, u in map(parse_provider, providers)]
    combined = run_multi(plist, cfg, out, max_cost=max_cost)
    result = {k: v for k, v in combined.items() if k in ("format", "verdict", "exit_code", "alpha", "providers", "budget")}
    result["format"] = "specguard-audit-verdict/v1"
    return result


def _echo_providers(result: dict[str, Any], out: Path, as_json: bool) -> None:
    if as_json:
        _print_json(result)
        return
    for e in result["providers"]:
        click.echo(f"{e['name']}: {e['verdict']} ({'; '.join(e['reasons'])})")
    if result["budget"]:
        click.echo(f"budget: {result['budget']['reason']}")
    click.echo(f"report: {out / 'report.html'} (JSON: {out / 'report.json'})")


def _run_one(cfg: Any, out: Path, price: float | None, max_cost: float | None,
             ray_scorers: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """One provider, locally, on Ray or under a cost budget: (report, verdict JSON)."""
    from specguard.audit import AuditUsageError
    from specguard.audit.multi import provider_verdict, run_single_with_budget, verdict_json
    from specguard.audit.run import run_audit

    if max_cost is not None:
        if price is None:
            raise AuditUsageError("--max-cost needs --price-per-1k-tokens", field="price_per_1k_tokens", got=None)
        report = run_single_with_budget(cfg, out, price, max_cost)
    elif ray_scorers is not None:
        from specguard.audit.ray_run import RayAuditOptions, run_audit_ray

        report = run_audit_ray(cfg, out, RayAuditOptions(scorer_actors=ray_scorers))
    else:
        report = run_audit(cfg, out)
    return report, verdict_json([provider_verdict("provider", report, out / "report.json")], cfg.alpha,
                                report.get("budget"))


@audit_group.command(name="report")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the versioned verdict JSON (docs/audit.md).")
def report_command(directory: str, as_json: bool) -> None:
    """Re-analyse an audit directory from its raw log (no queries) and rewrite the reports."""
    from specguard.audit.multi import provider_verdict, verdict_json
    from specguard.audit.run import load_config, run_audit

    out = Path(directory)
    report = run_audit(load_config(out), out, offline=True)
    if as_json:
        _print_json(verdict_json([provider_verdict("provider", report, out / "report.json")], report["alpha"]))
    else:
        _echo_summary(report, out)


@audit_group.command(name="simulate")
@click.option("--reference", required=True, help="Model reference to serve.")
@click.option("--substitute", default=None, help="q8|int8|q4|q3|prune:N|noise:S|mix:SUB:FRAC (none = honest).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8765, show_default=True, help="Port to listen on.")
@click.option("--threads", type=int, default=None, help="torch CPU threads (honest variation).")
@click.option("--served-name", default=None, help="Model name to report.")
@click.option("--no-logprobs", is_flag=True, help="Never return logprobs, even when asked.")
@click.option("--ignore-seed", is_flag=True, help="Replace each request's seed with a random one.")
@click.option("--fail-rate", type=float, default=0.0, show_default=True, help="Share of 429/500 answers.")
@click.option("--retry-after", type=float, default=1.0, show_default=True,
              help="Retry-After seconds sent with the simulated failures.")
@click.option("--malformed-rate", type=float, default=0.0, show_default=True,
              help="Share of answers cut off into malformed JSON.")
@click.option("--unmappable-rate", type=float, default=0.0, show_default=True, help="Share of tokens with bogus bytes.")
@click.option("--slow", type=float, default=0.0, show_default=True, help="Seconds to wait before each answer.")
@click.option("--fault-seed", type=int, default=0, show_default=True,
              help="Seed of the random faults (--fail-rate, --malformed-rate, --ignore-seed).")
@click.option("--switch-after", type=int, default=None, help="Answer N requests honestly, then switch (--switch-to).")
@click.option("--switch-to", default=None, help="What to serve after the switch: a substitute spec or model:REF.")
@click.option("--reference-runtime", type=click.Choice(["torch", "llamacpp"]), default="torch", show_default=True,
              help="Serve a GGUF reference with llama.cpp as is (no substitutes: they transform torch weights).")
def simulate_command(**options: Any) -> None:
    """Serve the reference (or a substitute) as an OpenAI-compatible provider on loopback."""
    import torch

    from specguard.audit.simulate import SimulatorConfig, serve

    cfg = SimulatorConfig.from_cli(**options)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    app = cfg.build_app()
    click.echo(f"serving {app.state.simulator.reference.name} ({cfg.substitute or 'honest'}) on "
               f"http://{cfg.host}:{cfg.port}/v1", err=True)
    serve(app, cfg.host, cfg.port)


@audit_group.command(name="calibrate")
@click.option("--reference", required=True, help="Model reference to calibrate.")
@click.option("--prompts", "prompts_file", default=None,
              help="JSONL prompts (prompt/text/turns; default: the built-in prompts).")
@click.option("--n", "n_prompts", type=int, default=8, show_default=True, help="Prompts to measure on.")
@click.option("--max-tokens", type=int, default=32, show_default=True, help="Tokens generated per prompt.")
@click.option("--top-logprobs", type=int, default=5, show_default=True,
              help="Alternatives compared per token.")
@click.option("--out", "out_file", default="calibration.json", show_default=True,
              help="Calibration JSON to write.")
@click.option("--setups", default=None, help="Comma-separated set-ups (default: all; see docs/audit.md).")
@click.option("--gguf", default=None, help="GGUF of the reference for the llama.cpp set-ups (default: its own).")
def calibrate_command(reference, prompts_file, n_prompts, max_tokens, top_logprobs, out_file, setups, gguf) -> None:
    """Measure the honest-noise null of a reference (torch and llama.cpp set-ups) and save it as JSON."""
    from specguard.audit import calibrate
    from specguard.audit.run import load_prompts
    from specguard.models import load_model

    names = tuple(x.strip() for x in setups.split(",") if x.strip()) if setups else calibrate.SETUPS
    unknown = [n for n in names if n not in calibrate.SETUPS]
    if unknown:
        raise click.BadParameter(f"unknown set-up(s) {unknown}; expected some of {list(calibrate.SETUPS)}",
                                 param_hint="--setups")
    ref = load_model(reference)
    prompts = [ref.encode_chat([{"role": "user", "content": p}]) for p in load_prompts(prompts_file, n_prompts)]
    cal = calibrate.calibrate(ref, prompts, max_tokens, top_logprobs, names, gguf=gguf)
    calibrate.save(cal, Path(out_file))
    click.echo(json.dumps({n: s.get("mean_abs_delta", s.get("error")) for n, s in cal["setups"].items()}, indent=1))


# --- audit monitor: reference-free change detection (docs/audit.md, "Monitoring closed models") ---


@audit_group.group(name="monitor")
def monitor_group() -> None:
    """Watch a model behind an API (closed models included) for a silent change; no reference weights."""


@monitor_group.command(name="baseline")
@cacert_option
@click.option("--base-url", required=True, help="Provider base URL, e.g. http://127.0.0.1:8000/v1")
@click.option("--model", "model_name", required=True, help="Model name to monitor.")
@click.option("--store", required=True, type=click.Path(file_okay=False), help="Directory of the monitor store.")
@click.option("--prompts", "prompts_file", default=None, help="JSONL prompts (prompt/text/turns).")
@click.option("--n-prompts", type=int, default=8, show_default=True, help="Distinct prompts to use, at most this many (a prompt is never repeated).")
@click.option("--repeats", type=int, default=5, show_default=True, help="Times each prompt is asked (noise).")
@click.option("--max-tokens", type=int, default=16, show_default=True, help="Tokens per answer.")
@click.option("--top-logprobs", type=int, default=5, show_default=True,
              help="Alternatives (top_logprobs) requested per answer token.")
@click.option("--text-only", is_flag=True, help="Do not ask for logprobs (text fingerprint only).")
@click.option("--tolerance", type=float, default=1e-3, show_default=True,
              help="Logprob differences below this (nats) are noise; also the near-tie margin.")
@click.option("--api-key-env", default=None, help="Environment variable holding the API key (never written).")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Hard deadline in seconds for each request, retries included.")
@click.option("--max-retries", type=int, default=6, show_default=True,
              help="Retries per request on 408/409/425/429/5xx, timeouts and connection errors.")
@click.option("--force", is_flag=True, help="Replace an existing baseline (the old one, its history and logs move to DIR/archive/).")
@click.option("--allow-nondeterministic", is_flag=True,
              help="INSECURE: use a baseline whose greedy repeats part beyond engine noise as the null (a provider "
                   "mixing models into the baseline can then switch unseen).")
@click.option("--json", "as_json", is_flag=True, help="Print the baseline summary as JSON.")
def monitor_baseline_command(store: str, force: bool, as_json: bool, **options: Any) -> None:
    """Measure the provider's answers and run-to-run noise; store the fingerprint."""
    from specguard.audit.monitor import MonitorConfig, create_baseline

    cfg = MonitorConfig.from_cli(**options)
    out = create_baseline(cfg, Path(store), force=force)
    if as_json:
        click.echo(json.dumps(out, indent=1))
    else:
        click.echo(f"baseline: {out['answered']}/{out['asked']} answers ({out['mode']}), digest {out['digest']}")
        click.echo("keep the digest elsewhere and pass it to `check --baseline-digest` to pin this baseline")
    _warn_nondeterministic(out, cfg.allow_nondeterministic)


def _warn_nondeterministic(out: dict[str, Any], allowed: bool) -> None:
    det = out["determinism"]
    if not det["deterministic"]:
        click.echo(f"WARNING: non-deterministic baseline: greedy repeats part at decisive positions on "
                   f"{len(det['prompts'])} of {out['prompts']} prompts (margin up to "
                   f"{det['largest_divergence_margin']:.3g} nats, limit {det['threshold']:.3g}); "
                   + ("accepted as the null (--allow-nondeterministic): a provider mixing models into it can switch "
                      "unseen" if allowed else "checks against it are inconclusive, never no_change"),
                   err=True)


@monitor_group.command(name="check")
@cacert_option
@click.option("--store", required=True, type=click.Path(exists=True, file_okay=False),
              help="Directory of the monitor store (made by baseline).")
@click.option("--repeats", type=int, default=2, show_default=True, help="Times each prompt is asked now.")
@click.option("--alpha", type=float, default=0.01, show_default=True, help="False-alarm rate of the test.")
@click.option("--base-url", default=None, help="Override the stored base URL.")
@click.option("--api-key-env", default=None, help="Override the stored API key variable name.")
@click.option("--baseline-digest", default=None, help="Fail unless the stored baseline has this digest.")
@click.option("--history-head", default=None,
              help="Fail unless the history's head is this digest (printed by the previous check).")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Hard deadline in seconds for each request, retries included.")
@click.option("--max-retries", type=int, default=6, show_default=True,
              help="Retries per request on 408/409/425/429/5xx, timeouts and connection errors.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the Monte Carlo null.")
@click.option("--json", "as_json", is_flag=True, help="Print the check result as JSON (docs/audit.md).")
def monitor_check_command(store: str, as_json: bool, **options: Any) -> None:
    """Re-ask the baseline's prompts and test for a change. Exit 0 no change, 6 change, 1 inconclusive."""
    from specguard.audit.monitor import EXIT_CODES, CheckOptions, run_check

    res = run_check(Path(store), CheckOptions.from_cli(**options))
    if as_json:
        click.echo(json.dumps(res, indent=1))
    else:
        click.echo(f"check {res['check']}: {res['verdict']} (fisher {res['statistic']:.2f}, p = {res['p_value']:.3g}, "
                   f"alpha {res['alpha']:g}, {res['prompts_used']}/{res['prompts_asked']} prompts, "
                   f"{res['changed_prompts']} changed, {res['mode']})")
        for reason in res["reasons"]:
            click.echo(f"  {reason}")
        click.echo(f"history head {res['history_head']} (pass it to the next check's --history-head)")
    raise SystemExit(EXIT_CODES[res["verdict"]])


@monitor_group.command(name="history")
@click.option("--store", required=True, type=click.Path(exists=True, file_okay=False),
              help="Directory of the monitor store (made by baseline).")
@click.option("--baseline-digest", default=None, help="Fail unless the stored baseline has this digest.")
@click.option("--history-head", default=None, help="Fail unless the history contains this head (from a check).")
@click.option("--json", "as_json", is_flag=True, help="Print the baseline digest, head and checks as JSON.")
def monitor_history_command(store, baseline_digest, history_head, as_json) -> None:
    """The timeline of checks (verified hash chain)."""
    from specguard.audit.monitor import chain_head, history_table, load_baseline, read_chain, read_history

    base = load_baseline(Path(store), baseline_digest)
    records = read_history(Path(store), base["digest"], expected_head=history_head)
    head = chain_head(read_chain(Path(store), base["digest"]), base["digest"])
    if as_json:
        click.echo(json.dumps({"baseline_digest": base["digest"], "history_head": head, "checks": records}, indent=1))
    else:
        click.echo(f"baseline {base['digest']} ({base['model']}, {len(base['prompts'])} prompts x {base['repeats']})")
        click.echo(f"history head {head}")
        click.echo(history_table(records))
