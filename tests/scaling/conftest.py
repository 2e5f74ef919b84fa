"""A local Ray cluster for the scaling tests: 2 CPUs, no dashboard, bound to 127.0.0.1.

Module-scoped: each test module starts its own cluster and shuts it down when it is done, so
no Ray process outlives the module. The tests are marked `ray` (deselect with `-m "not ray"`)."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray", reason="specguard[ray] is not installed")


@pytest.fixture(scope="module")
def ray_cluster():
    """`ray.init(num_cpus=2)` on 127.0.0.1, shut down at the end of the module."""
    if ray.is_initialized():  # pragma: no cover - another module left one running
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    try:
        yield ray
    finally:
        try:
            from ray import serve

            serve.shutdown()
        finally:
            ray.shutdown()
