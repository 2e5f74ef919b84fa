"""Property-based fuzzing of the server against its own OpenAPI schema (schemathesis, in-process
ASGI on a tiny model): valid and invalid requests of every operation, never a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from support.servers import make_tiny_model_dir

from specguard.models import load_model
from specguard.serve.app import create_app
from specguard.serve.config import ServeConfig
from specguard.serve.node import Node


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    tiny = make_tiny_model_dir(tmp_path_factory.getbasetemp() / "tiny-model-4k", context=4096)
    node = Node(load_model(str(tiny)), ServeConfig(drafter="ngram", home=tmp_path_factory.mktemp("fuzz-home"),
                served_model_name="tiny", max_model_len=64, default_max_tokens=8, max_queue=4))
    yield schemathesis.openapi.from_asgi("/openapi.json", create_app(node))
    node.close()


def _operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_server_errors(api_schema, mode):
    operations = _operations(api_schema)
    paths = {op.path for op in operations}
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= paths
    statuses: list[int] = []

    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not list(operation.iter_parameters()) \
                and not operation.get_request_payload_content_types():
            continue  # nothing to make invalid
        examples = 12 if operation.method.upper() == "POST" else 4

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            response = case.call()
            statuses.append(response.status_code)
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} body={case.body!r} -> {response.status_code}: "
                f"{response.text[:300]}")
            case.validate_response(response, checks=[not_a_server_error])
            if response.status_code >= 400:
                err = response.json()["error"]
                assert err["message"] and err["type"]

        try:
            check()
        except Unsatisfiable:
            # e.g. a free-form string path parameter: no value violates the schema
            assert mode is GenerationMode.NEGATIVE and operation.method.upper() == "GET", operation.label
    assert statuses and all(s < 500 for s in statuses)
    if mode is GenerationMode.POSITIVE:
        assert statuses.count(200) > len(operations), "valid requests should mostly generate"
    else:
        assert any(400 <= s < 500 for s in statuses)
