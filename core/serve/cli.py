"""The serving process's commands: `specguard serve` (and `specguard draft-serve`, from
specguard.serve.draft_server). The click options become one validated `ServeConfig`."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import click

from ..defaults import RunDefaults, available_cpus, choose_defaults, llamacpp_drafter_available
from ..engine.factory import drafter_names, engine_names
from ..outbound_args import cacert_option
from ..plugin_manager import require_all_loaded
from ..policies import load_policy
from ..progress import phase
from ..web import http
from ..web.base import run_uvicorn, server_options, server_security
from .app import create_app
from .config import ServeConfig
from .draft_server import draft_serve_command
from .node import Node, build_node

log = logging.getLogger("specguard.server")


@click.command(name="serve")
@cacert_option
@click.option("-m", "--model", "model_ref", default=None, help="Model reference (default smollm2-135m).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="TCP port to listen on.")
@click.option("-e", "--engine", default="specguard", show_default=True,
              help="Engine: specguard (alias builtin), llamacpp, ... (see docs/engines.md).")
@click.option("-d", "--drafter", default=None,
              help="Drafter name (see `specguard plugins`; default: llamacpp when installed, else ngram).")
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
@click.option("--role", type=click.Choice(["serve", "verifier"]), default="serve", show_default=True,
              help="serve: answer clients with receipts; verifier: re-check other nodes' responses (consensus).")
@click.option("--verifier", "verifiers", multiple=True, help="URL of a verifier node (repeatable; consensus).")
@click.option("--verifier-key", "verifier_keys", multiple=True,
              help="Trusted verifier key, 64 hex digits or a file (repeatable; consensus). Required with --verifier "
                   "unless the policy lists verifier_keys.")
@click.option("--quorum", type=int, default=None, help="Verifier votes needed (consensus; default n - f).")
@click.option("--served-model-name", default=None, help="Name clients use in `model` (default: the model reference).")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="CPU threads: torch's, and the engine's (default: the CPUs left after the drafter's and one "
                   "for the server, at most 8; llamacpp engine: half the CPUs).")
@click.option("--drafter-threads", type=click.IntRange(1, 1024), default=None,
              help="llama.cpp threads of the llamacpp drafter (default 1).")
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
def serve_command(**options: Any) -> None:
    """Run the OpenAI-compatible server with receipts (Ctrl-C stops it)."""
    require_all_loaded()  # a node missing a policy plugin must not serve what that plugin would refuse
    config = ServeConfig.from_cli(**options)  # bad values (and verifier keys) fail before any loading
    _trust_policy_cas(config.policy_ref)
    if config.use_ray:  # a verifier pool on Ray Serve: --max-concurrency = max replicas, --threads = CPUs per replica
        from ..consensus.ray_pool import serve_pool

        return serve_pool(config.model_ref, role=config.role, host=config.host, port=config.port,
                          policy=config.policy_ref, threads=config.threads, max_replicas=config.max_concurrency or 1,
                          max_queue=config.max_queue, api_key=config.api_key, api_keys_file=config.api_keys_file,
                          ssl_certfile=config.ssl_certfile, ssl_keyfile=config.ssl_keyfile)
    run_serve(config)
    return None


def run_serve(config: ServeConfig) -> None:
    """Choose the thread defaults, build the node and its app, print the banner and serve until stopped."""
    started = time.monotonic()
    security = server_security(config.api_key, config.api_keys_file, config.ssl_certfile, config.ssl_keyfile)
    defaults = choose_defaults(available_cpus(), llamacpp_drafter_available(config.model_ref), engine=config.engine,
                               drafter=config.drafter, threads=config.threads, drafter_threads=config.drafter_threads)
    if config.engine != "llamacpp":  # a llama.cpp server never imports torch
        import torch

        torch.set_num_threads(defaults.torch_threads)
    llamacpp_context = {"n_ctx": config.max_model_len} if config.engine == "llamacpp" else {}
    config = config.replace(drafter=defaults.drafter,
                            engine_options={**defaults.engine_options(), **llamacpp_context},
                            drafter_options={**defaults.drafter_options(), **config.drafter_options})
    node = build_node(config)
    with phase("Preparing the integrity layers (keys, log, attestation, commitments, routes)"):
        app = create_app(node, api_keys=security.api_keys)
        info = node.describe()
    auth = f"{len(security.api_keys)} API key(s)" if security.api_keys else "none (every route open)"
    _print_banner(node, info, url=f"{security.scheme}://{_shown_host(config.host)}:{config.port}/v1", auth=auth,
                  threads=_threads_row(defaults))
    click.echo(f"  defaults       {defaults.describe()}", err=True)
    if node.policy.insecure:
        _insecure_banner(node)
    click.echo(f"specguard: ready in {time.monotonic() - started:.1f}s", err=True)
    try:
        run_uvicorn(app, config.host, config.port, security, log_level=config.log_level, timeout_graceful_shutdown=5)
    finally:
        node.close()


def _shown_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _threads_row(defaults: RunDefaults) -> str:
    return f"torch {defaults.torch_threads}" + (
        f", llama.cpp drafter {defaults.drafter_threads}" if defaults.drafter_threads else "") + (
        f", engine {defaults.engine_threads}" if defaults.engine_threads else "")


def _insecure_banner(node: Node) -> None:
    banner = "!" * 78
    click.echo(banner, err=True)
    click.echo(f"!! INSECURE POLICY {node.policy.name!r}: " + "; ".join(node.policy.insecure_reasons()), err=True)
    click.echo("!! Receipts from this node do not prove TEE execution. Use --policy strict in production.", err=True)
    click.echo(banner, err=True)
    log.warning("serving with INSECURE policy %r", node.policy.name)


def _print_banner(node: Node, info: dict[str, Any], *, url: str, auth: str, threads: str) -> None:
    """What is being served, how, under which policy, and where its keys and log live (stderr)."""
    engine = node.engine_name
    unused = "" if node.engine_capabilities.uses_drafter else f" (unused by engine {engine})"
    mode = "continuous batching" if info["batching"] else "one thread per request"
    runtime = info["runtime"]
    home = Path(node.home)
    lines = [
        f"specguard serving {info['model']} at {url}",
        f"  engine         {engine} ({node.engine_capabilities.version})",
        f"  runtime        {runtime['name']} {runtime['dtype']} on {runtime['device']}",
        f"  drafter        {node.drafter_name}{unused}",
        f"  threads        {threads}",
        f"  batching       {mode}; max concurrency {info['max_concurrency']}, queue {info['max_queue']}; "
        f"role {node.role}",
        f"  policy         {node.policy.name} ({node.policy.digest})",
        f"  model digest   {info['model_digest']}",
        f"  node key id    {info['key_id']}  (public key {info['public_key']})",
        f"  keys           {home / 'keys'}",
        f"  log            {home / 'log'}  (origin {info['log_origin']})",
        f"  auth           {auth}",
    ]
    for line in lines:
        click.echo(line, err=True)


def _trust_policy_cas(policy_ref: str) -> None:
    """Add the policy's `[tls]` CAs (per verifier / drafter URL) to what --cacert set."""
    if not Path(policy_ref).is_file():  # a preset: presets name no CAs
        return
    cas = load_policy(policy_ref).tls
    http.trust_cas(dataclasses.replace(cas, default=http.trusted().default or cas.default))


def list_plugin_choices(command: click.Command) -> None:
    """Append the registered drafter and engine names to the help of `--drafter` and `--engine`."""
    names = {"drafter": drafter_names, "engine": engine_names}
    for param in command.params:
        if isinstance(param, click.Option) and param.name in names and param.help and "Installed:" not in param.help:
            param.help += " Installed: " + ", ".join(names[param.name]()) + "."


def register(cli: click.Group) -> None:
    """Add the serving commands to the CLI group (their --help lists the installed drafters and engines)."""
    cli.add_command(serve_command)
    cli.add_command(draft_serve_command)
    list_plugin_choices(serve_command)
    generate = cli.commands.get("generate")
    if generate is not None:
        list_plugin_choices(generate)
