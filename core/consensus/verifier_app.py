"""A standalone verifier process: `python -m specguard.consensus.verifier_app --model DIR --port P`.

The same routes as `specguard serve --role verifier` (POST /specguard/v1/verify, GET
/specguard/v1/verifier/key, GET /health) without the generation server: it loads the model,
its node key from --home (created on first use) and the policy's [consensus] tolerances.
Handy for small deployments and for multi-process tests.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..context import NodeContext
from ..errors import SpecguardError
from ..keys import home_dir

#: a verifier-only process's node: a NodeContext that issues no receipts and stores no responses
VerifierNode = NodeContext.for_verifier


def create_app(node: NodeContext, *, api_keys: Iterable[str] = ()) -> Any:
    """A FastAPI app with /health, the consensus verifier routes and the node's attestation route,
    on the common server base (OpenAI error shape, streamed body limit, optional bearer auth)."""
    from ..plugin_manager import load_plugins
    from ..web.base import create_base_app
    from .config import MAX_BODY_BYTES

    app = create_base_app("specguard verifier", api_keys=api_keys, body_limit=MAX_BODY_BYTES)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "role": "verifier", "key_id": node.key_id,
                "public_key": node.public_key_bytes.hex(), "model_digest": node.model.digest,
                "auth": bool(app.state.auth_enabled)}

    # every layer's routes, as on a serving node: the consensus verifier routes (role "verifier") and
    # GET /specguard/v1/attestation, the evidence the votes name
    load_plugins().hook.register_routes(app=app, node=node)
    return app


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, load the model and run the verifier with uvicorn."""
    from ..models import load_model
    from ..policies import load_policy
    from ..web.base import add_server_arguments, limits_from_arguments, run_uvicorn, server_security
    from .config import ALLOWED_NODES_ENV, allowed_nodes_from_env, key_value

    parser = argparse.ArgumentParser(prog="python -m specguard.consensus.verifier_app")
    parser.add_argument("--model", help="model reference (default: the embedded model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--home", help="node home with keys/node.key (default $SPECGUARD_HOME)")
    parser.add_argument("--policy", default="dev", help="policy preset or TOML file ([consensus] tolerances)")
    parser.add_argument("--allowed-node", action="append", default=None, metavar="KEY",
                        help="serving-node key (64 hex or a file) whose receipts this verifier judges (repeatable; "
                             f"also ${ALLOWED_NODES_ENV}, comma-separated); default: the policy's allowed_nodes")
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    try:
        security = server_security(args.api_key, args.api_keys_file, args.ssl_certfile, args.ssl_keyfile)
        limits = limits_from_arguments(args)
    except SpecguardError as exc:
        parser.error(exc.summary())
    allowed = [key_value(k, "--allowed-node") for k in args.allowed_node] if args.allowed_node else \
        allowed_nodes_from_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    node = VerifierNode(load_model(args.model), load_policy(args.policy),
                        Path(args.home) if args.home else home_dir(), allowed_nodes=allowed)
    node.model.digest  # compute the digest before serving  # noqa: B018
    run_uvicorn(create_app(node, api_keys=security.api_keys), args.host, args.port, security, limits=limits)


if __name__ == "__main__":
    main()
