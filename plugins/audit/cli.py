"""`specguard audit run | report | simulate | calibrate | monitor`."""

from __future__ import annotations

import json
from pathlib import Path

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
@click.option("--extra-body", default=None,
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
def run_command(base_url, providers, model_name, reference, api_key_envs, prompts_file, budget, max_tokens, alpha,
                top_logprobs, honest_class, endpoint, extra_body, calibration, calibration_prompts, margin,
                min_effect_logprob, min_effect_tokens, mmd_samples, mmd_prompts, text_only, timeout, max_retries,
                seeded_prompts, rut_prompts, rut_samples, sample_temperature, sample_top_p, sample_top_k, sample_seed,
                max_cost, prices, as_json, out_dir, ray_scorers=None, **more) -> None:
    """Audit a provider (or several); rerun the same command to resume.

    Exit 0 consistent, 4 substituted, 1 inconclusive (several providers: the worst), 2 bad usage."""
    from specguard.audit import AuditUsageError
    from specguard.audit.multi import (
        EXIT_CODES,
        Provider,
        parse_named,
        parse_provider,
        provider_verdict,
        run_multi,
        run_single_with_budget,
        verdict_json,
    )
    from specguard.audit.run import AuditConfig, run_audit

    if bool(base_url) == bool(providers):
        raise AuditUsageError("give either --base-url or one or more --provider NAME=URL", field="base_url",
                              got=f"base_url={base_url!r}, providers={len(providers)}")
    from specguard.attest.jsonio import loads_strict
    from specguard.errors import ParseError

    try:
        extra = loads_strict(extra_body, "--extra-body") if extra_body else {}
    except ParseError as exc:
        raise click.BadParameter(f"not JSON: {exc.summary()}", param_hint="--extra-body") from exc
    if not isinstance(extra, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--extra-body")
    if ray_scorers is not None and (providers or max_cost is not None):
        raise AuditUsageError("--ray runs one provider without a cost budget", field="ray",
                              got="with --provider/--max-cost", expected="--base-url only")
    key_default, key_per = parse_named(api_key_envs, "api_key_env")
    price_default, price_per = parse_named(prices, "price_per_1k_tokens", float)
    for price in [price_default, *price_per.values()]:
        if price is not None and not (price >= 0 and price != float("inf")):
            raise AuditUsageError("bad price", field="price_per_1k_tokens", got=price, expected="a number >= 0")
    for name, value in (("seeded", seeded_prompts), ("rut", rut_prompts), ("rut-samples", rut_samples)):
        if value < 0:
            raise AuditUsageError("must not be negative", field=name, got=value)
    cfg = AuditConfig(endpoint=endpoint, extra_body=extra, base_url=base_url or "", model=model_name,
                      reference=reference, prompts_file=prompts_file,
                      budget=budget, max_tokens=max_tokens, alpha=alpha, top_logprobs=top_logprobs,
                      honest_class=honest_class, calibration=calibration, calibration_prompts=calibration_prompts,
                      margin=margin, min_effect_logprob=min_effect_logprob, min_effect_tokens=min_effect_tokens,
                      mmd_samples=mmd_samples, mmd_prompts=mmd_prompts, request_logprobs=not text_only,
                      api_key_env=key_default, timeout=timeout, max_retries=max_retries,
                      seeded_prompts=seeded_prompts, rut_prompts=rut_prompts, rut_samples=rut_samples,
                      sample_temperature=sample_temperature, sample_top_p=sample_top_p, sample_top_k=sample_top_k,
                      sample_seed=sample_seed, reference_runtime=more.get("reference_runtime", "auto"))
    out = Path(out_dir)
    if providers:
        parsed = [parse_provider(p) for p in providers]
        plist = [Provider(n, u, price_per.get(n, price_default), key_per.get(n)) for n, u in parsed]
        combined = run_multi(plist, cfg, out, max_cost=max_cost)
        result = {k: v for k, v in combined.items() if k in ("format", "verdict", "exit_code", "alpha", "providers",
                                                                 "budget")}
        result["format"] = "specguard-audit-verdict/v1"
    else:
        if max_cost is not None:
            price = price_per.get("provider", price_default)
            if price is None:
                raise AuditUsageError("--max-cost needs --price-per-1k-tokens", field="price_per_1k_tokens", got=None)
            report = run_single_with_budget(cfg, out, price, max_cost)
        elif ray_scorers is not None:
            from specguard.audit.ray_run import RayAuditOptions, run_audit_ray

            report = run_audit_ray(cfg, out, RayAuditOptions(scorer_actors=ray_scorers))
        else:
            report = run_audit(cfg, out)
        result = verdict_json([provider_verdict("provider", report, out / "report.json")], cfg.alpha,
                              report.get("budget"))
    if as_json:
        _print_json(result)
    elif providers:
        for e in result["providers"]:
            click.echo(f"{e['name']}: {e['verdict']} ({'; '.join(e['reasons'])})")
        if result["budget"]:
            click.echo(f"budget: {result['budget']['reason']}")
        click.echo(f"report: {out / 'report.html'} (JSON: {out / 'report.json'})")
    else:
        _echo_summary(report, out)
    raise SystemExit(EXIT_CODES.get(result["verdict"], 1))


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
def simulate_command(reference, substitute, host, port, threads, served_name, no_logprobs, ignore_seed, fail_rate,
                     retry_after, malformed_rate, unmappable_rate, slow, fault_seed, switch_after, switch_to,
                     **more) -> None:
    """Serve the reference (or a substitute) as an OpenAI-compatible provider on loopback."""
    import torch

    from specguard.audit import AuditUsageError
    from specguard.audit.simulate import Misbehaviour, Switch, build_app, serve
    from specguard.audit.substitutes import parse_substitute
    from specguard.models import load_model

    if threads:
        torch.set_num_threads(threads)
    sub = parse_substitute(substitute) if substitute else None
    ref = load_model(reference, runtime=more.get("reference_runtime", "torch"))
    needs_torch = sub is not None or (switch_to is not None and not switch_to.startswith("model:"))
    if ref.model is None and needs_torch:
        raise AuditUsageError("substitutes transform torch weights", field="reference_runtime", got="llamacpp",
                              expected="torch with --substitute or --switch-to SUBSTITUTE")
    switch = None
    if (switch_after is None) != (switch_to is None) or (switch_after is not None and switch_after < 0):
        raise AuditUsageError("--switch-after N and --switch-to go together", field="switch_after",
                              got=switch_after, expected="N >= 0 with --switch-to")
    if switch_to is not None:
        switch = (Switch(switch_after, model=load_model(switch_to[6:])) if switch_to.startswith("model:")
                  else Switch(switch_after, substitute=parse_substitute(switch_to)))
    bad = Misbehaviour(no_logprobs=no_logprobs, ignore_seed=ignore_seed, fail_rate=fail_rate, retry_after=retry_after,
                       malformed_rate=malformed_rate, unmappable_rate=unmappable_rate, slow=slow, fault_seed=fault_seed)
    click.echo(f"serving {ref.name} ({substitute or 'honest'}) on http://{host}:{port}/v1", err=True)
    serve(build_app(ref, sub, bad, served_name, switch), host, port)


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
def monitor_baseline_command(base_url, model_name, store, prompts_file, n_prompts, repeats, max_tokens, top_logprobs,
                             text_only, tolerance, api_key_env, timeout, max_retries, force, allow_nondeterministic,
                             as_json) -> None:
    """Measure the provider's answers and run-to-run noise; store the fingerprint."""
    from specguard.audit.monitor import MonitorConfig, create_baseline
    from specguard.audit.run import load_prompts

    cfg = MonitorConfig(base_url=base_url, model=model_name, prompts=load_prompts(prompts_file, n_prompts),
                        repeats=repeats, max_tokens=max_tokens, top_logprobs=top_logprobs, logprobs=not text_only,
                        tolerance=tolerance, api_key_env=api_key_env, timeout=timeout, max_retries=max_retries,
                        allow_nondeterministic=allow_nondeterministic)
    out = create_baseline(cfg, Path(store), force=force)
    if as_json:
        click.echo(json.dumps(out, indent=1))
    else:
        click.echo(f"baseline: {out['answered']}/{out['asked']} answers ({out['mode']}), digest {out['digest']}")
        click.echo("keep the digest elsewhere and pass it to `check --baseline-digest` to pin this baseline")
    det = out["determinism"]
    if not det["deterministic"]:
        click.echo(f"WARNING: non-deterministic baseline: greedy repeats part at decisive positions on "
                   f"{len(det['prompts'])} of {out['prompts']} prompts (margin up to "
                   f"{det['largest_divergence_margin']:.3g} nats, limit {det['threshold']:.3g}); "
                   + ("accepted as the null (--allow-nondeterministic): a provider mixing models into it can switch "
                      "unseen" if allow_nondeterministic else "checks against it are inconclusive, never no_change"),
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
def monitor_check_command(store, repeats, alpha, base_url, api_key_env, baseline_digest, history_head, timeout,
                          max_retries, seed, as_json) -> None:
    """Re-ask the baseline's prompts and test for a change. Exit 0 no change, 6 change, 1 inconclusive."""
    from specguard.audit.monitor import EXIT_CODES, run_check

    res = run_check(Path(store), repeats=repeats, alpha=alpha, base_url=base_url, api_key_env=api_key_env,
                    baseline_digest=baseline_digest, history_head=history_head, timeout=timeout,
                    max_retries=max_retries, seed=seed)
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
