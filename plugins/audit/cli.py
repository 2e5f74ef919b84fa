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


@audit_group.command(name="run")
@click.option("--base-url", required=True, help="Provider base URL, e.g. http://127.0.0.1:8000/v1")
@click.option("--model", "model_name", required=True, help="Model name the provider claims to serve.")
@click.option("--reference", required=True, help="Reference copy of the claimed model (model reference).")
@click.option("--api-key-env", default=None, help="Environment variable holding the API key (never written).")
@click.option("--prompts", "prompts_file", default=None, help="JSONL prompts (prompt/text/turns).")
@click.option("--budget", type=int, default=8, show_default=True, help="Prompts to send.")
@click.option("--max-tokens", type=int, default=32, show_default=True,
              help="Tokens per answer, up to the model context (power per budget is in the report).")
@click.option("--alpha", type=float, default=0.01, show_default=True)
@click.option("--top-logprobs", type=int, default=5, show_default=True)
@click.option("--honest-class", default="auto", show_default=True,
              type=click.Choice(["auto", "cross-engine", "bf16", "fp32"]),
              help="auto = cross-engine when calibrated (the provider's engine is unknown); bf16/fp32 = same engine.")
@click.option("--endpoint", type=click.Choice(["chat", "completions"]), default="chat", show_default=True,
              help="chat: /chat/completions; completions: the legacy /completions with the prompt as raw text.")
@click.option("--extra-body", default=None,
              help='JSON object merged into every request, e.g. \'{"repeat_penalty": 1.0}\' for llama.cpp servers.')
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
@click.option("--out", "out_dir", default="audit-out", show_default=True)
def run_command(base_url, model_name, reference, api_key_env, prompts_file, budget, max_tokens, alpha, top_logprobs,
                honest_class, endpoint, extra_body, calibration, calibration_prompts, margin, min_effect_logprob, min_effect_tokens,
                mmd_samples, mmd_prompts, text_only, timeout, max_retries, out_dir) -> None:
    """Audit a provider; rerun the same command to resume. Exit 0 consistent, 4 substituted, 1 inconclusive."""
    from specguard.audit.run import AuditConfig, run_audit

    try:
        extra = json.loads(extra_body) if extra_body else {}
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--extra-body") from exc
    if not isinstance(extra, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--extra-body")
    cfg = AuditConfig(endpoint=endpoint, extra_body=extra, base_url=base_url, model=model_name, reference=reference, prompts_file=prompts_file,
                      budget=budget, max_tokens=max_tokens, alpha=alpha, top_logprobs=top_logprobs,
                      honest_class=honest_class, calibration=calibration, calibration_prompts=calibration_prompts,
                      margin=margin, min_effect_logprob=min_effect_logprob, min_effect_tokens=min_effect_tokens,
                      mmd_samples=mmd_samples, mmd_prompts=mmd_prompts, request_logprobs=not text_only,
                      api_key_env=api_key_env, timeout=timeout,
                      max_retries=max_retries)
    report = run_audit(cfg, Path(out_dir))
    _echo_verdict(report)
    raise SystemExit({"consistent": 0, "substituted": 4}.get(report["verdict"], 1))


@audit_group.command(name="report")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
def report_command(directory: str) -> None:
    """Re-analyse an audit directory from its raw log (no queries) and rewrite the reports."""
    from specguard.audit.run import load_config, run_audit

    out = Path(directory)
    report = run_audit(load_config(out), out, offline=True)
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
