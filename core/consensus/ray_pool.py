"""A pool of consensus verifiers on Ray Serve: one verifier identity, many replicas.

Inside ONE operator's trust domain a verifier can be scaled out: a Ray Serve deployment runs the
standalone verifier app (`specguard.consensus.verifier_app.create_app`, the same routes, request
checks, rate limit and signed votes as `python -m specguard.consensus.verifier_app`) in every
replica, and Serve routes requests to replicas and autoscales them on queue length
(`target_ongoing_requests`). A Ray cluster is one trust domain, so a pool is ONE verifier: all
replicas sign with one node key and count as one vote. Consensus between independent operators
stays specguard's HTTP protocol (docs/scaling.md).

The node key never travels through Ray. The deployment's arguments carry only the path of the
node home (`home`, with `keys/node.key`, mode 0600, provisioned on every Ray node that may run a
replica) and the key id the deployment expects (`key_id`); each replica loads the key itself and
refuses to start (ConfigError) when the file is missing, readable by others, or holds another key.
So the private key is never in the Serve config, the controller's checkpoint, the object store,
an environment variable or a log, and no replica can answer with a different identity. API keys
likewise come only from a file (`api_keys_file`) read by each replica.

Entry points: `specguard serve --role verifier --ray` (`serve_pool`) and `serve run CONFIG.yaml`
with `import_path: specguard.consensus.ray_pool:app_builder` (`app_builder`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UsageError
from ..keys import KEY_FILE, NodeKey, load_or_create_node_key

log = logging.getLogger("specguard.consensus.ray_pool")

APP_NAME = "specguard-verifier"
DEPLOYMENT_NAME = "SpecguardVerifier"
#: a replica judges one request at a time (the service holds a lock around model work): scale out
#: when more than this many requests are queued or running per replica
TARGET_ONGOING_REQUESTS = 2
MAX_ONGOING_REQUESTS = 4
SETTINGS = ("model", "home", "key_id", "policy", "allowed_nodes", "api_keys_file", "threads")


def _require_ray() -> Any:
    try:
        import ray
        from ray import serve  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise UsageError("Ray is not installed: pip install 'specguard[ray]'", field="--ray",
                         got=str(exc)[:120], expected="ray[serve,data]") from exc
    return ray


def pool_settings(args: dict[str, Any]) -> dict[str, Any]:
    """Check a deployment's arguments (from `serve run` YAML or the CLI) and fill defaults.

    Only public or path-valued settings are accepted: there is no field for a private key or an
    API key, so none can end up in the Serve config."""
    if not isinstance(args, dict):
        raise ConfigError("verifier pool arguments must be a mapping", field="args", got=type(args).__name__)
    unknown = sorted(set(args) - set(SETTINGS))
    if unknown:
        raise ConfigError("unknown verifier pool argument", field="args", got=unknown, expected=list(SETTINGS))
    for name in ("home", "key_id"):
        if not isinstance(args.get(name), str) or not args[name]:
            raise ConfigError(f"verifier pool argument {name!r} is required", field=f"args.{name}",
                              got=args.get(name), expected="home: node home with keys/node.key; key_id: "
                              "`specguard consensus show-key --home HOME`")
    allowed = args.get("allowed_nodes")
    if allowed is not None and (not isinstance(allowed, list) or not all(isinstance(k, str) for k in allowed)):
        raise ConfigError("allowed_nodes must be a list of public keys (64 hex digits or files)",
                          field="args.allowed_nodes", got=allowed)
    threads = args.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ConfigError("threads must be a positive integer", field="args.threads", got=threads)
    return {"model": args.get("model"), "home": args["home"], "key_id": args["key_id"],
            "policy": args.get("policy") or "dev", "allowed_nodes": allowed,
            "api_keys_file": args.get("api_keys_file"), "threads": threads}


def load_pool_key(home: str | Path, key_id: str) -> NodeKey:
    """The deployment's node key from `home`/keys/node.key, refusing to create one.

    A replica must never mint its own key (it would vote under another identity): the file must
    exist, be private to its owner (0600, checked by `specguard.keys`) and hold the key `key_id`."""
    path = Path(home) / "keys" / KEY_FILE
    if not path.is_file():
        raise ConfigError("the verifier pool's node key is not on this Ray node", field=str(path), got="no file",
                          expected="the deployment key, mode 0600, provisioned on every node")
    key = load_or_create_node_key(Path(home))
    if key.key_id != key_id:
        raise ConfigError("this Ray node holds another node key than the deployment's", field="key_id",
                          got=key.key_id, expected=key_id)
    return key


class VerifierReplica:
    """One replica: loads the model and the deployment key, then serves the verifier app."""

    def __init__(self, args: dict[str, Any]) -> None:
        settings = pool_settings(args)
        if settings["threads"]:
            import torch

            torch.set_num_threads(settings["threads"])
        from ..models import load_model
        from ..policies import load_policy
        from ..web.base import load_api_keys
        from .config import key_value
        from .verifier_app import VerifierNode

        home = Path(settings["home"])
        load_pool_key(home, settings["key_id"])  # before any model work: fail fast on a wrong node
        allowed = None if settings["allowed_nodes"] is None else \
            [key_value(k, f"allowed_nodes[{i}]") for i, k in enumerate(settings["allowed_nodes"])]
        node = VerifierNode(load_model(settings["model"]), load_policy(settings["policy"]), home, allowed_nodes=allowed)
        if node.key_id != settings["key_id"]:  # the file changed between the two reads
            raise ConfigError("node key changed while the replica started", field="key_id", got=node.key_id,
                              expected=settings["key_id"])
        node.model.digest  # compute the digest before serving  # noqa: B018
        self.node = node
        self.api_keys = load_api_keys(None, settings["api_keys_file"], env={}) if settings["api_keys_file"] else ()
        log.info("verifier replica ready: key %s, model %s", node.key_id, node.model.digest)

    def __serve_build_asgi_app__(self) -> Any:
        """The app this replica serves: the standalone verifier's, unchanged."""
        from .verifier_app import create_app

        return create_app(self.node, api_keys=self.api_keys)


_DEPLOYMENT: Any = None


def deployment() -> Any:
    """The Ray Serve deployment of `VerifierReplica` (built on first use, so that importing this
    module does not need Ray). Defaults: 1 CPU per replica, 1..2 replicas autoscaled on queue length."""
    global _DEPLOYMENT
    if _DEPLOYMENT is None:
        _require_ray()
        from ray import serve

        _DEPLOYMENT = serve.deployment(
            name=DEPLOYMENT_NAME,
            ray_actor_options={"num_cpus": 1},
            max_ongoing_requests=MAX_ONGOING_REQUESTS,
            autoscaling_config={"min_replicas": 1, "max_replicas": 2,
                                "target_ongoing_requests": TARGET_ONGOING_REQUESTS},
            health_check_period_s=10,
        )(serve.ingress()(VerifierReplica))
    return _DEPLOYMENT


def app_builder(args: dict[str, Any]) -> Any:
    """Application builder for `serve run` / `serve deploy` (`import_path:
    specguard.consensus.ray_pool:app_builder`, `args:` the settings of `pool_settings`)."""
    return deployment().bind(pool_settings(dict(args)))


def build_pool(settings: dict[str, Any], *, max_replicas: int = 2, min_replicas: int = 1,
               cpus_per_replica: float = 1, max_queued_requests: int = -1) -> Any:
    """A bound application with explicit replica counts (what `serve_pool` and tests run)."""
    settings = pool_settings(settings)
    if not 1 <= min_replicas <= max_replicas:
        raise UsageError("replicas must satisfy 1 <= min <= max", field="replicas",
                         got=(min_replicas, max_replicas))
    return deployment().options(
        ray_actor_options={"num_cpus": cpus_per_replica},
        autoscaling_config={"min_replicas": min_replicas, "max_replicas": max_replicas,
                            "target_ongoing_requests": TARGET_ONGOING_REQUESTS},
        max_queued_requests=max_queued_requests,
    ).bind(settings)


def serve_pool(model_ref: str | None, *, role: str, host: str, port: int, policy: str, threads: int | None,
               max_replicas: int, max_queue: int, api_key: str | None, api_keys_file: str | None,
               ssl_certfile: str | None, ssl_keyfile: str | None, home: Path | None = None) -> None:
    """`specguard serve --role verifier --ray`: join the cluster at RAY_ADDRESS, or start a private one
    on 127.0.0.1, run the pool behind Serve's HTTP proxy on host:port and block until Ctrl-C.

    The node key is $SPECGUARD_HOME's (created there, 0600, on first use, on this machine only);
    on a multi-node cluster provision the same file on every node (docs/scaling.md)."""
    import os
    import signal

    import click

    from ..keys import home_dir
    from ..web.base import API_KEY_ENV, server_security
    from .config import allowed_nodes_from_env

    if role != "verifier":
        raise UsageError("--ray runs a verifier pool only", field="--ray", got=f"--role {role}",
                         expected="--role verifier")
    if api_key or os.environ.get(API_KEY_ENV):
        raise UsageError("with --ray, API keys come only from a file every replica reads: an inline key would be "
                         "stored in the Serve config", field="--api-key", got="a key (not shown)",
                         expected="--api-keys FILE")
    server_security(None, api_keys_file, ssl_certfile, ssl_keyfile)  # check the files before starting Ray
    home = Path(home) if home is not None else home_dir()
    key = load_or_create_node_key(home)
    allowed = allowed_nodes_from_env()
    settings = {"model": model_ref, "home": str(home.resolve()), "key_id": key.key_id, "policy": policy,
                "allowed_nodes": [k.hex() for k in allowed] if allowed is not None else None,
                "api_keys_file": str(Path(api_keys_file).resolve()) if api_keys_file else None,
                "threads": threads}
    ray = _require_ray()
    from ray import serve

    joined = bool(os.environ.get("RAY_ADDRESS"))
    if joined:
        ray.init()
    else:  # a private cluster on loopback, ended with this command
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False)
    http: dict[str, Any] = {"host": host, "port": port}
    if ssl_certfile:
        http.update(ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    serve.start(http_options=http)
    app = build_pool(settings, max_replicas=max_replicas, cpus_per_replica=threads or 1,
                     max_queued_requests=max_queue if max_queue > 0 else -1)
    serve.run(app, name=APP_NAME, route_prefix="/")
    scheme = "https" if ssl_certfile else "http"
    click.echo(f"specguard verifier pool at {scheme}://{host}:{port} (Ray Serve, 1..{max_replicas} replicas)",
               err=True)
    click.echo(f"  node key id    {key.key_id}  (public key {key.public_hex}; one key for every replica)",
               err=True)
    click.echo(f"  key file       {home / 'keys' / KEY_FILE} (read by each replica; never sent through Ray)",
               err=True)
    def stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # a service manager's stop ends the pool as Ctrl-C does
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        if joined:
            serve.delete(APP_NAME)  # only this app: other apps of the shared cluster keep running
        ray.shutdown()  # a private cluster ends with its driver


__all__ = ["APP_NAME", "DEPLOYMENT_NAME", "VerifierReplica", "app_builder", "build_pool", "deployment",
           "load_pool_key", "pool_settings", "serve_pool"]
