"""specguard.serve.routes: module-level handlers on one router, reading the app's typed ServeState.

The full behaviour of each route is in test_server_app.py / test_openai_compat.py (in-process) and
test_server_live.py (a real server); this file checks the shape the routes module promises."""

from __future__ import annotations

import pytest
from support.asgi import app_client
from support.servers import make_tiny_model_dir

from specguard.models import load_model
from specguard.serve import routes
from specguard.serve.app import create_app
from specguard.serve.config import ServeConfig
from specguard.serve.node import Node
from specguard.serve.stream import ServeState

ROUTES = {("GET", "/health"), ("GET", "/metrics"), ("GET", "/v1/models"), ("GET", "/v1/models/{model}"),
          ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
          ("GET", "/specguard/v1/responses/{receipt_id}")}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tiny = make_tiny_model_dir(tmp_path_factory.getbasetemp() / "tiny-routes", context=512)
    node = Node(load_model(str(tiny)), ServeConfig(drafter="none", home=tmp_path_factory.mktemp("routes-home"),
                                                   served_model_name="tiny", default_max_tokens=4, batching=False))
    yield create_app(node, api_keys=("routes-key-123",))
    node.close()


def test_the_router_holds_every_node_route():
    held = {(method, route.path) for route in routes.router.routes for method in route.methods}
    assert held == ROUTES


def test_the_app_holds_one_typed_state_and_the_routes(app):
    state = app.state.serve
    assert isinstance(state, ServeState) and isinstance(state.node, Node)
    assert state.auth_enabled is True and state.node.served_model_name == "tiny"
    paths = app.openapi()["paths"]
    assert {(method, path) for method, path in ROUTES} <= {(m.upper(), p) for p, ops in paths.items() for m in ops}


def test_handlers_read_the_state_health_is_open_the_rest_needs_the_key(app):
    with app_client(app) as client:
        health = client.get("/health").json()
        assert health["model"] == "tiny" and health["auth"] is True and health["batching"] is False
        assert client.get("/v1/models").status_code == 401
        models = client.get("/v1/models", headers={"Authorization": "Bearer routes-key-123"}).json()
        assert [m["id"] for m in models["data"]] == ["tiny"] and models["data"][0]["max_model_len"] == 512
        missing = client.get("/v1/models/other", headers={"Authorization": "Bearer routes-key-123"})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_the_openapi_schema_pins_the_served_model(app):
    with app_client(app) as client:
        schema = client.get("/openapi.json", headers={"Authorization": "Bearer routes-key-123"}).json()
    props = schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert props["model"]["enum"] == ["tiny"]
