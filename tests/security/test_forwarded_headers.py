"""Issue 20 §4: `X-Forwarded-For` from loopback bypassed the verifier's rate limit (60 of 60 requests
with a rotated header passed): uvicorn believes forwarded headers from 127.0.0.1 by default.
Forwarded headers now count only from the proxies the operator names (`--trusted-proxy`).

One real verifier process on 127.0.0.1; clients come from different loopback source addresses.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import pytest
from support.servers import free_port, make_tiny_model_dir, start_process

from specguard.keys import load_or_create_node_key

BURST = 3
PROXY = "127.0.0.2"


@pytest.fixture(scope="module")
def verifiers(tmp_path_factory):
    """Two verifiers with the same small rate limit: one with default settings, one naming a proxy."""
    root = tmp_path_factory.mktemp("forwarded")
    model_dir = make_tiny_model_dir(root / "model", context=256)
    node = load_or_create_node_key(root / "node")
    policy = root / "limited.toml"
    policy.write_text(f'name = "limited"\n[consensus]\nrate_limit_per_second = 0.0001\nrate_limit_burst = {BURST}\n')

    def start(name: str, extra: list[str]):
        port = free_port()
        return start_process([sys.executable, "-m", "specguard.consensus.verifier_app", "--model", str(model_dir),
                              "--port", str(port), "--home", str(root / name), "--policy", str(policy),
                              "--allowed-node", node.public_hex, *extra], port, env={"OMP_NUM_THREADS": "1"})

    with ThreadPoolExecutor(2) as pool:
        default, proxied = pool.map(lambda a: start(*a), [("default", []), ("proxied", ["--trusted-proxy", PROXY])])
    yield SimpleNamespace(default=default, proxied=proxied)
    default.stop()
    proxied.stop()


def _statuses(url: str, source: str, n: int, prefix: str) -> list[int]:
    out = []
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=60) as http:
        for i in range(n):
            headers = {"X-Forwarded-For": f"{prefix}.{i}", "Forwarded": f"for={prefix}.{i}"}
            out.append(http.post(url + "/specguard/v1/verify", json={}, headers=headers).status_code)
    return out


@pytest.mark.parametrize("which", ["default", "proxied"])
def test_rotated_forwarded_headers_do_not_reset_the_rate_limit(verifiers, which):
    """From loopback, which is no named proxy: the header is ignored, the TCP peer is the client."""
    statuses = _statuses(getattr(verifiers, which).url, "127.0.0.1", 20, "10.9.8")
    # the first BURST are counted and refused as malformed (400); the rest are rate-limited
    assert statuses == [400] * BURST + [429] * (20 - BURST)


def test_a_named_proxy_is_believed(verifiers):
    statuses = _statuses(verifiers.proxied.url, PROXY, 10, "10.7.6")
    assert statuses == [400] * 10  # ten different clients behind the proxy, one request each
