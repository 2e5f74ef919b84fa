"""The `specguard` command line. Plugins add commands through the `register_commands` hook."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, fields
from typing import Any

import click

from . import __version__
from .errors import SpecguardError, UsageError
from .outbound_args import cacert_option
from .plugin_manager import get_plugins, load_plugins, pm
from .transcript import SamplingParams


@click.group()
@click.version_option(__version__, prog_name="specguard")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """specguard: verifiable LLM inference with lossless speculative decoding."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@cli.command(name="plugins")
def plugins_command() -> None:
    """List loaded plugins and the hooks each implements, as JSON."""
    click.echo(json.dumps(get_plugins(), indent=2))


@cli.command(name="models")
@click.argument("ref", required=False, default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--runtime", type=click.Choice(["torch", "llamacpp"]), default="torch", show_default=True,
              help="Load with this runtime (llamacpp: a GGUF as is, no torch weights).")
def models_command(ref: str | None, as_json: bool, runtime: str = "torch") -> None:
    """Resolve a model reference (default: smollm2-135m), load it and print its digest."""
    from .models import load_model

    info = load_model(ref, runtime=runtime).describe()
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            click.echo(f"{key:18} {value}")


@cli.command(name="generate")
@cacert_option
@click.argument("prompt", required=False)
@click.option("--chat", "chat", is_flag=True, help="Wrap PROMPT as a user message with the chat template.")
@click.option("-m", "--model", "model_ref", default=None, help="Model reference (default smollm2-135m).")
@click.option("-e", "--engine", default="specguard", show_default=True,
              help="Engine: specguard (alias builtin), llamacpp, ... (see docs/engines.md).")
@click.option("-d", "--drafter", default=None,
              help="Drafter name (see `specguard plugins`; default: llamacpp when installed, else ngram).")
@click.option("--draft-model", default=None, help="Draft model reference for --drafter draft-model.")
@click.option("--drafter-url", default=None, help="URL of a `specguard draft-serve` for --drafter remote.")
@click.option("--drafter-api-key", default=None, envvar="SPECGUARD_DRAFTER_API_KEY",
              help="Bearer key sent to the --drafter-url drafting server (or SPECGUARD_DRAFTER_API_KEY).")
@click.option("--exit-layer", type=int, default=None, help="Layers used by --drafter early-exit.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="CPU threads: torch's, and the engine's (default: the CPUs left after the drafter's and one "
                   "spare, at most 8; llamacpp engine: half the CPUs).")
@click.option("--drafter-threads", type=click.IntRange(1, 1024), default=None,
              help="llama.cpp threads of the llamacpp drafter (default 1).")
@click.option("-n", "--max-tokens", type=int, default=128, show_default=True, help="Generated tokens at most.")
@click.option("-t", "--temperature", type=float, default=0.0, show_default=True, help="0 is greedy.")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="Nucleus sampling mass.")
@click.option("--top-k", type=int, default=0, show_default=True, help="Sample among the k likeliest (0: all).")
@click.option("--seed", type=int, default=None, help="Seed for sampled decoding (drawn by specguard if absent).")
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option("--mode", type=click.Choice(["gumbel", "speculative-sampling"]), default="gumbel", show_default=True,
              help="gumbel: seed-deterministic, re-derivable; speculative-sampling: trusted local drafters only.")
@click.option("--ignore-eos", is_flag=True, help="Keep generating past EOS up to --max-tokens (for benchmarks).")
@click.option("--json", "as_json", is_flag=True, help="Print the transcript and metrics as one JSON object.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="The torch runtime's precision (llamacpp runs the GGUF's own types).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the torch runtime holds the weights.")
def generate_command(**options: Any) -> None:
    """Generate text with target-verified speculative decoding (or another --engine)."""
    config = GenerateConfig.from_cli(**options)
    prompt = config.prompt
    if prompt is None:
        if sys.stdin.isatty():
            raise UsageError("give a PROMPT argument or pipe one on standard input")
        prompt = sys.stdin.read()
    target, engine = _generate_engine(config)
    prompt_ids = target.encode_chat([{"role": "user", "content": prompt}]) if config.chat else target.encode(prompt)
    if config.as_json:
        click.echo(json.dumps(engine.generate(prompt_ids, config.params()).to_json()))
        return
    transcript = _echo_stream(target, engine.stream(prompt_ids, config.params()))
    m = transcript.metrics()
    click.echo()
    click.echo(
        f"[{m['output_tokens']} tokens, {m['tokens_per_second']:.1f} tok/s, drafter {transcript.drafter}, "
        f"mean accepted {m['mean_accepted_tokens']:.2f}/step, acceptance {m['acceptance_rate']:.0%}]",
        err=True,
    )


@dataclass(frozen=True)
class GenerateConfig:
    """The `specguard generate` options (click checks their types and ranges)."""

    prompt: str | None = None
    chat: bool = False
    model_ref: str | None = None
    engine: str = "specguard"
    drafter: str | None = None
    draft_model: str | None = None
    drafter_url: str | None = None
    drafter_api_key: str | None = None
    exit_layer: int | None = None
    threads: int | None = None
    drafter_threads: int | None = None
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    mode: str = "gumbel"
    ignore_eos: bool = False
    as_json: bool = False
    dtype: str = "fp32"
    device: str = "cpu"

    @classmethod
    def from_cli(cls, **options: Any) -> GenerateConfig:
        return cls(**{**options, "stop": tuple(options.get("stop") or ())})

    def params(self) -> SamplingParams:
        """The request's sampling parameters: the fields this config shares with SamplingParams."""
        return SamplingParams(**{f.name: getattr(self, f.name) for f in fields(SamplingParams)})


def _generate_engine(config: GenerateConfig) -> tuple[Any, Any]:
    """The target model and an engine over it, with the thread defaults printed (stderr)."""
    import torch

    from .defaults import available_cpus, choose_defaults, llamacpp_drafter_available
    from .engine.factory import check_engine_name, make_drafter, make_engine, runtime_for_engine
    from .models import load_model

    config.params()  # bad sampling parameters fail before the model loads
    check_engine_name(config.engine)  # before the model loads
    if config.drafter == "remote" and not config.drafter_url:
        raise UsageError("--drafter remote needs --drafter-url URL", field="--drafter-url")
    defaults = choose_defaults(available_cpus(), llamacpp_drafter_available(config.model_ref), engine=config.engine,
                               drafter=config.drafter, threads=config.threads, drafter_threads=config.drafter_threads)
    torch.set_num_threads(defaults.torch_threads)
    click.echo(f"[{defaults.describe()}]", err=True)
    target = load_model(config.model_ref, runtime=runtime_for_engine(config.engine), dtype=config.dtype,
                        device=config.device)
    options = {"draft_model": config.draft_model, "exit_layer": config.exit_layer, "drafter_url": config.drafter_url,
               "drafter_api_key": config.drafter_api_key, **defaults.drafter_options()}
    options = {k: v for k, v in options.items() if v is not None}
    drafter = make_drafter(defaults.drafter, target, options)
    return target, make_engine(target, drafter, config.engine, defaults.engine_options())


def _echo_stream(target: Any, stream: Any) -> Any:
    """Print the text as the engine streams it; the transcript."""
    shown = 0
    emitted: list[int] = []
    while True:
        try:
            event = next(stream)
        except StopIteration as done:
            return done.value
        emitted.extend(t.token_id for t in event.tokens)
        text = target.decode(emitted)
        click.echo(text[shown:], nl=False)
        shown = len(text)


def _register_plugin_commands() -> None:
    from .serve import cli as serve_cli  # the serving process: serve, draft-serve

    serve_cli.register(cli)
    load_plugins()
    pm.hook.register_commands(cli=cli)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI; a SpecguardError prints one clear line and exits non-zero."""
    try:
        _register_plugin_commands()
        cli.main(args=argv, prog_name="specguard", standalone_mode=False)
    except SpecguardError as exc:
        if os.environ.get("SPECGUARD_DEBUG"):
            raise
        click.echo(f"Error: {exc.summary()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
