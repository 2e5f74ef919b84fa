"""CLI commands of the server: `specguard serve`."""

from __future__ import annotations

import logging

import click

from .base import run_uvicorn, server_options, server_security

log = logging.getLogger("specguard.server")


@click.command(name="serve")
@click.option("-m", "--model", "model_ref", default=None, help="Model reference (default smollm2-135m).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("-e", "--engine", default="specguard", show_default=True,
              help="Engine: specguard (alias builtin), llamacpp, ... (see docs/engines.md).")
@click.option("-d", "--drafter", default="ngram", show_default=True, help="Drafter name (see `specguard plugins`).")
@click.option("--draft-model", default=None, help="Draft model reference for --drafter draft-model.")
@click.option("--drafter-url", default=None, help="URL of a `specguard draft-serve` for --drafter remote.")
@click.option("--exit-layer", type=int, default=None, help="Layers used by --drafter early-exit.")
@click.option("--policy", "policy_ref", default="dev", show_default=True, help="Policy preset (dev, strict) or TOML path.")
@click.option("--max-concurrency", type=click.IntRange(1, 64), default=None,
              help="Requests generating at once: the batch size with batching (default 8), else threads (default 1).")
@click.option("--batching/--no-batching", default=True, show_default=True,
              help="Continuous batching for the built-in engine: one target forward per step over every running "
                   "request. Other engines always run one thread per request.")
@click.option("--max-batch-rows", type=click.IntRange(0, 1 << 16), default=None,
              help="With batching: cap a batched forward's rows by shortening drafts as more requests run "
                   "(default 8; 0 = no cap). Outputs never change, only speed.")
@click.option("--max-queue", type=click.IntRange(0, 10_000), default=8, show_default=True,
              help="Requests allowed to wait for a slot; more get HTTP 429.")
@click.option("--default-max-tokens", type=click.IntRange(1, 1 << 20), default=256, show_default=True,
              help="max_tokens of a chat request that does not set it.")
@click.option("--max-model-len", type=click.IntRange(2, 1 << 24), default=None,
              help="Cap the context length requests may use (default: the model's).")
@click.option("--role", type=click.Choice(["serve", "verifier"]), default="serve", show_default=True)
@click.option("--verifier", "verifiers", multiple=True, help="URL of a verifier node (repeatable; consensus).")
@click.option("--verifier-key", "verifier_keys", multiple=True,
              help="Trusted verifier key, 64 hex digits or a file (repeatable; consensus). Required with --verifier "
                   "unless the policy lists verifier_keys.")
@click.option("--quorum", type=int, default=None, help="Verifier votes needed (consensus; default n - f).")
@click.option("--served-model-name", default=None, help="Name clients use in `model` (default: the model reference).")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="CPU threads: torch's, and the engine's (llamacpp: default half the CPUs).")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="The torch runtime's precision (weights loaded at it, no fp32 copy). llamacpp runs the GGUF's "
                   "own types.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the torch runtime holds the weights.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True, help="uvicorn log level.")
@click.option("--drafter-api-key", default=None, envvar="SPECGUARD_DRAFTER_API_KEY",
              help="Bearer key sent to the --drafter-url drafting server (or SPECGUARD_DRAFTER_API_KEY).")
@click.option("--max-prompt-chars", type=click.IntRange(1, 1 << 30), default=None,
              help="Refuse prompts longer than this, before tokenizing (default 16 x the context length).")
@click.option("--ray", "use_ray", is_flag=True,
              help="With --role verifier: run a Ray Serve pool of verifier replicas sharing one node key "
                   "(specguard[ray]; docs/scaling.md).")
@server_options
def serve_command(model_ref, host, port, engine, drafter, draft_model, drafter_url, exit_layer, policy_ref,
                  max_concurrency, batching, max_batch_rows, max_queue, default_max_tokens, max_model_len, role, verifiers,
                  verifier_keys, quorum,
                  served_model_name, threads, dtype, device, log_level, drafter_api_key=None, max_prompt_chars=None, api_key=None,
                  api_keys_file=None, ssl_certfile=None, ssl_keyfile=None, use_ray=False) -> None:
    """Run the OpenAI-compatible server with receipts (Ctrl-C stops it)."""
    if use_ray:  # a verifier pool on Ray Serve: --max-concurrency = max replicas, --threads = CPUs per replica
        from ..consensus.ray_pool import serve_pool

        return serve_pool(model_ref, role=role, host=host, port=port, policy=policy_ref, threads=threads,
                          max_replicas=max_concurrency or 1, max_queue=max_queue, api_key=api_key,
                          api_keys_file=api_keys_file, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    from ..consensus.config import key_value
    from ..node import build_node
    from .app import create_app

    trusted_verifier_keys = [key_value(k, "--verifier-key") for k in verifier_keys]  # bad keys fail before loading
    security = server_security(api_key, api_keys_file, ssl_certfile, ssl_keyfile)
    if threads is not None and engine != "llamacpp":  # a llama.cpp server never imports torch
        import torch

        torch.set_num_threads(threads)
    node = build_node(
        model_ref, drafter=drafter, draft_model=draft_model, drafter_url=drafter_url, exit_layer=exit_layer,
        policy=policy_ref, max_concurrency=max_concurrency, max_queue=max_queue, role=role,
        verifiers=list(verifiers), quorum=quorum, served_model_name=served_model_name,
        verifier_keys=trusted_verifier_keys,
        default_max_tokens=default_max_tokens, max_model_len=max_model_len,
        drafter_api_key=drafter_api_key, max_prompt_chars=max_prompt_chars,
        engine_name=engine, engine_options={"threads": threads, "n_ctx": max_model_len if engine == "llamacpp" else None}, batching=batching, max_batch_rows=max_batch_rows,
        dtype=dtype, device=device,
    )
    app = create_app(node, api_keys=security.api_keys)
    info = node.describe()
    shown_host = f"[{host}]" if ":" in host else host
    click.echo(f"specguard serving {info['model']} at {security.scheme}://{shown_host}:{port}/v1", err=True)
    click.echo(f"  model digest   {info['model_digest']}", err=True)
    runtime = info.get("runtime", {})
    click.echo(f"  runtime        {runtime.get('name')} {runtime.get('dtype')} on {runtime.get('device')}", err=True)
    click.echo(f"  node key id    {info['key_id']}  (public key {info['public_key']})", err=True)
    click.echo(f"  log origin     {info['log_origin']}", err=True)
    click.echo(f"  policy         {node.policy.name} ({node.policy.digest})", err=True)
    unused = "" if node.engine_capabilities.uses_drafter else f" (unused by engine {engine})"
    mode = "batched" if info["batching"] else "one thread per request"
    click.echo(f"  engine         {engine} ({node.engine_capabilities.version})", err=True)
    click.echo(f"  drafter        {drafter}{unused}; max concurrency {info['max_concurrency']} ({mode}), "
               f"queue {max_queue}; role {role}", err=True)
    click.echo(f"  auth           {len(security.api_keys)} API key(s)" if security.api_keys
               else "  auth           none (every route open)", err=True)
    if node.policy.insecure:
        banner = "!" * 78
        click.echo(banner, err=True)
        click.echo(f"!! INSECURE POLICY {node.policy.name!r}: " + "; ".join(node.policy.insecure_reasons()), err=True)
        click.echo("!! Receipts from this node do not prove TEE execution. Use --policy strict in production.",
                   err=True)
        click.echo(banner, err=True)
        log.warning("serving with INSECURE policy %r", node.policy.name)
    try:
        run_uvicorn(app, host, port, security, log_level=log_level, timeout_graceful_shutdown=5)
    finally:
        node.close()


def register(cli: click.Group) -> None:
    """Add the server's commands to the CLI group."""
    cli.add_command(serve_command)
