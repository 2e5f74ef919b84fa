"""`specguard audit run | report | simulate | calibrate`."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group(name="audit")
def audit_group() -> None:
    """Check whether an OpenAI-compatible provider serves the model it claims."""


def _echo_verdict(report: dict) -> None:
    click.echo(json.dumps({"verdict": report["verdict"], "reasons": report["reasons"],
                           "tests": [{k: t[k] for k in ("name", "statistic", "p_value", "samples", "mde", "powered")}
                                     for t in report["tests"]]}, indent=1))


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
@click.option("--base-url", default=None, help="Provider base URL, e.g. http://127.0.0.1:8000/v1 (one provider).")
@click.option("--provider", "providers", multiple=True,
              help="NAME=URL; repeat to audit several providers on the same prompts into OUT/NAME/ and one report.")
@click.option("--model", "model_name", required=True, help="Model name the provider claims to serve.")
@click.option("--reference", required=True, help="Reference copy of the claimed model (model reference).")
@click.option("--api-key-env", "api_key_envs", multiple=True,
              help="Environment variable holding the API key (never written); NAME=VAR for one provider.")
@click.option("--prompts", "prompts_file", default=None, help="JSONL prompts (prompt/text/turns).")
@click.option("--budget", type=int, default=8, show_default=True, help="Prompts to send.")
@click.option("--max-tokens", type=int, default=32, show_default=True)
@click.option("--alpha", type=float, default=0.01, show_default=True)
@click.option("--top-logprobs", type=int, default=5, show_default=True)
@click.option("--honest-class", default="bf16", show_default=True, help="fp32 or bf16 (bf16 or better).")
@click.option("--calibration", default=None, help="Calibration JSON to use instead of measuring one.")
@click.option("--calibration-prompts", type=int, default=8, show_default=True)
@click.option("--margin", type=float, default=1.5, show_default=True, help="Safety factor on the honest noise.")
@click.option("--min-effect-logprob", type=float, default=0.1, show_default=True)
@click.option("--min-effect-tokens", type=float, default=0.05, show_default=True)
@click.option("--mmd-samples", type=int, default=0, show_default=True, help="Samples per prompt for the text-only MMD test.")
@click.option("--mmd-prompts", type=int, default=4, show_default=True)
@click.option("--text-only", is_flag=True, help="Do not ask for logprobs (audit as a text-only client).")
@click.option("--timeout", type=float, default=60.0, show_default=True)
@click.option("--max-retries", type=int, default=6, show_default=True)
@click.option("--seeded", "seeded_prompts", type=int, default=0, show_default=True,
              help="Prompts for the seeded-exact test (providers implementing specguard's seeded sampling).")
@click.option("--rut", "rut_prompts", type=int, default=0, show_default=True,
              help="Prompts for the rank-based uniformity test (one sampled answer each; any provider).")
@click.option("--rut-samples", type=int, default=15, show_default=True, help="Reference samples per RUT prompt.")
@click.option("--sample-temperature", type=float, default=1.0, show_default=True)
@click.option("--sample-top-p", type=float, default=1.0, show_default=True)
@click.option("--sample-top-k", type=int, default=0, show_default=True, help="Sent (as top_k) only when > 0.")
@click.option("--sample-seed", type=int, default=0, show_default=True,
              help="Secret from which the sampled requests' seeds are derived; choose your own.")
@click.option("--max-cost", type=float, default=None, help="Stop before spending more than this (needs prices).")
@click.option("--price-per-1k-tokens", "prices", multiple=True,
              help="Price per 1000 tokens (prompt + answer), for all providers or NAME=PRICE for one.")
@click.option("--json", "as_json", is_flag=True, help="Print the versioned verdict JSON (docs/audit.md).")
@click.option("--out", "out_dir", default="audit-out", show_default=True)
def run_command(base_url, providers, model_name, reference, api_key_envs, prompts_file, budget, max_tokens, alpha,
                top_logprobs, honest_class, calibration, calibration_prompts, margin, min_effect_logprob,
                min_effect_tokens, mmd_samples, mmd_prompts, text_only, timeout, max_retries, seeded_prompts, rut_prompts,
                rut_samples, sample_temperature, sample_top_p, sample_top_k, sample_seed, max_cost, prices, as_json,
                out_dir) -> None:
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
    key_default, key_per = parse_named(api_key_envs, "api_key_env")
    price_default, price_per = parse_named(prices, "price_per_1k_tokens", float)
    for price in [price_default, *price_per.values()]:
        if price is not None and not (price >= 0 and price != float("inf")):
            raise AuditUsageError("bad price", field="price_per_1k_tokens", got=price, expected="a number >= 0")
    for name, value in (("seeded", seeded_prompts), ("rut", rut_prompts), ("rut-samples", rut_samples)):
        if value < 0:
            raise AuditUsageError("must not be negative", field=name, got=value)
    cfg = AuditConfig(base_url=base_url or "", model=model_name, reference=reference, prompts_file=prompts_file,
                      budget=budget, max_tokens=max_tokens, alpha=alpha, top_logprobs=top_logprobs,
                      honest_class=honest_class, calibration=calibration, calibration_prompts=calibration_prompts,
                      margin=margin, min_effect_logprob=min_effect_logprob, min_effect_tokens=min_effect_tokens,
                      mmd_samples=mmd_samples, mmd_prompts=mmd_prompts, request_logprobs=not text_only,
                      api_key_env=key_default, timeout=timeout, max_retries=max_retries,
                      seeded_prompts=seeded_prompts, rut_prompts=rut_prompts, rut_samples=rut_samples,
                      sample_temperature=sample_temperature, sample_top_p=sample_top_p, sample_top_k=sample_top_k,
                      sample_seed=sample_seed)
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
    else:
        _echo_verdict(report)
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
        _echo_verdict(report)


@audit_group.command(name="simulate")
@click.option("--reference", required=True, help="Model reference to serve.")
@click.option("--substitute", default=None, help="q8|int8|q4|q3|prune:N|noise:S|mix:SUB:FRAC (none = honest).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8765, show_default=True)
@click.option("--threads", type=int, default=None, help="torch CPU threads (honest variation).")
@click.option("--served-name", default=None, help="Model name to report.")
@click.option("--no-logprobs", is_flag=True)
@click.option("--ignore-seed", is_flag=True)
@click.option("--fail-rate", type=float, default=0.0, show_default=True, help="Share of 429/500 answers.")
@click.option("--retry-after", type=float, default=1.0, show_default=True)
@click.option("--malformed-rate", type=float, default=0.0, show_default=True)
@click.option("--unmappable-rate", type=float, default=0.0, show_default=True, help="Share of tokens with bogus bytes.")
@click.option("--slow", type=float, default=0.0, show_default=True, help="Seconds to wait before each answer.")
@click.option("--fault-seed", type=int, default=0, show_default=True)
def simulate_command(reference, substitute, host, port, threads, served_name, no_logprobs, ignore_seed, fail_rate,
                     retry_after, malformed_rate, unmappable_rate, slow, fault_seed) -> None:
    """Serve the reference (or a substitute) as an OpenAI-compatible provider on loopback."""
    import torch

    from specguard.audit.simulate import Misbehaviour, build_app, serve
    from specguard.audit.substitutes import parse_substitute
    from specguard.models import load_model

    if threads:
        torch.set_num_threads(threads)
    sub = parse_substitute(substitute) if substitute else None
    ref = load_model(reference)
    bad = Misbehaviour(no_logprobs=no_logprobs, ignore_seed=ignore_seed, fail_rate=fail_rate, retry_after=retry_after,
                       malformed_rate=malformed_rate, unmappable_rate=unmappable_rate, slow=slow, fault_seed=fault_seed)
    click.echo(f"serving {ref.name} ({substitute or 'honest'}) on http://{host}:{port}/v1", err=True)
    serve(build_app(ref, sub, bad, served_name), host, port)


@audit_group.command(name="calibrate")
@click.option("--reference", required=True)
@click.option("--prompts", "prompts_file", default=None)
@click.option("--n", "n_prompts", type=int, default=8, show_default=True)
@click.option("--max-tokens", type=int, default=32, show_default=True)
@click.option("--top-logprobs", type=int, default=5, show_default=True)
@click.option("--out", "out_file", default="calibration.json", show_default=True)
def calibrate_command(reference, prompts_file, n_prompts, max_tokens, top_logprobs, out_file) -> None:
    """Measure the honest-noise null of a reference and save it as JSON."""
    from specguard.audit import calibrate
    from specguard.audit.run import load_prompts
    from specguard.models import load_model

    ref = load_model(reference)
    prompts = [ref.encode_chat([{"role": "user", "content": p}]) for p in load_prompts(prompts_file, n_prompts)]
    cal = calibrate.calibrate(ref, prompts, max_tokens, top_logprobs)
    calibrate.save(cal, Path(out_file))
    click.echo(json.dumps({n: s.get("mean_abs_delta", s.get("error")) for n, s in cal["setups"].items()}, indent=1))
