"""`specguard audit run --ray` (specguard.audit.ray_run) gives the local run's report.

A local Ray cluster (2 CPUs, 127.0.0.1) runs the provider queries and the reference re-scoring as
Ray Data actor pools against simulated providers (`specguard audit simulate`) on loopback. For the
same inputs the whole report (verdict, reasons, every test statistic and p-value, per-prompt
records, client statistics) must equal the local run's; an interrupted run resumes from raw.jsonl
exactly as the local run does.
"""

from __future__ import annotations

import json

import pytest
from support.audit_providers import make_audit_model_dir, provider

from specguard.audit import calibrate
from specguard.audit.ray_run import RayAuditOptions, run_audit_ray
from specguard.audit.run import AuditConfig, load_prompts, run_audit
from specguard.models import load_model

pytestmark = pytest.mark.ray

BUDGET, TOKENS = 4, 10


@pytest.fixture(scope="module")
def setup(ray_cluster, tmp_path_factory):
    import torch

    base = tmp_path_factory.mktemp("ray-audit")
    ref_dir = make_audit_model_dir(base / "ref", seed=0)
    prompts = base / "prompts.jsonl"
    # 3 prompts for a budget of 4: prompts are never repeated (a repeat would be counted twice), 3 are asked
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}: tell me about topic number {i}."}) + "\n"
                               for i in range(3)))
    ref = load_model(str(ref_dir))
    ids = [ref.encode_chat([{"role": "user", "content": p}]) for p in load_prompts(str(prompts), 3)]
    cal_path = base / "calibration.json"
    calibrate.save(calibrate.calibrate(ref, ids, TOKENS, 5, setups=calibrate.HONEST_CLASSES["fp32"]), cal_path)
    # the scorers use the test process's torch thread count: fp32 sums, and so statistics, are bit-identical
    options = RayAuditOptions(scorer_actors=2, query_actors=2, threads=torch.get_num_threads())
    return {"ref_dir": ref_dir, "prompts": prompts, "ref": ref, "cal": cal_path, "base": base, "options": options}


def _config(setup, url, **kw) -> AuditConfig:
    args = dict(base_url=url, model="claimed", reference=str(setup["ref_dir"]), prompts_file=str(setup["prompts"]),
                budget=BUDGET, max_tokens=TOKENS, honest_class="fp32", calibration=str(setup["cal"]),
                min_effect_tokens=0.5, timeout=20, max_retries=4)
    args.update(kw)
    return AuditConfig(**args)


def _raw(setup, name) -> list[dict]:
    return [json.loads(line) for line in (setup["base"] / name / "raw.jsonl").read_text().splitlines()]


def test_ray_audit_gives_the_local_report_for_an_honest_provider(setup):
    with provider(setup["ref_dir"], "--threads", "1") as (url, _srv):
        local = run_audit(_config(setup, url), setup["base"] / "honest-local", reference=setup["ref"])
        on_ray = run_audit_ray(_config(setup, url), setup["base"] / "honest-ray", setup["options"],
                               reference=setup["ref"])
    assert local["verdict"] == "consistent", local["reasons"]
    assert {t["name"] for t in local["tests"]} == {"token_agreement", "logprob"}
    assert on_ray == local  # the whole report: verdict, statistics, per-prompt records, client counts
    assert local["client"]["attempts"] == 3 and local["client"]["reused"] == 0  # no prompt is asked twice
    assert len(local["per_prompt"]) == 3
    assert sorted(r["key"] for r in _raw(setup, "honest-ray")) == sorted(r["key"] for r in _raw(setup, "honest-local"))


def test_ray_audit_resumes_a_cut_log_as_the_local_run_text_only_substitute(setup):
    with provider(setup["ref_dir"], "--substitute", "q4") as (url, _srv):
        cfg = _config(setup, url, request_logprobs=False)
        local = run_audit(cfg, setup["base"] / "q4-local", reference=setup["ref"])
        # an interrupted run: two answers logged, then a write cut mid-line
        part = setup["base"] / "q4-resumed"
        part.mkdir()
        lines = (setup["base"] / "q4-local" / "raw.jsonl").read_text().splitlines(keepends=True)
        (part / "raw.jsonl").write_text("".join(lines[:2]) + lines[2][:40])
        resumed = run_audit_ray(cfg, part, setup["options"], reference=setup["ref"])
    assert local["verdict"] == "substituted", local["reasons"]
    assert local["client"]["attempts"] == 3 and local["client"]["reused"] == 0
    assert resumed["client"]["reused"] == 2 and resumed["client"]["attempts"] == 1  # the cut line is asked again
    assert {k: v for k, v in resumed.items() if k != "client"} == {k: v for k, v in local.items() if k != "client"}
    logged = (part / "raw.jsonl").read_text()
    assert logged.startswith("".join(lines[:2])) and logged.count('"status": 200') == 3  # appended, as run_audit does


def test_a_scorer_with_another_reference_copy_refuses_to_start(tmp_path):
    """A Ray node whose reference files differ from the driver's cannot score (fail closed)."""
    from specguard.audit import AuditError
    from specguard.audit.ray_run import ReferenceScorer, _config_json

    ref_dir = make_audit_model_dir(tmp_path / "ref", seed=5)
    cfg = AuditConfig(base_url="http://127.0.0.1:9/v1", model="claimed", reference=str(ref_dir))
    driver_digest = "sha256:" + "0" * 64
    with pytest.raises(AuditError, match="not the driver's") as err:
        ReferenceScorer(_config_json(cfg), driver_digest, threads=1)
    assert err.value.expected == driver_digest and err.value.got == load_model(str(ref_dir)).digest


def test_ray_workers_trust_the_drivers_private_ca(setup, tmp_path):
    """`audit run --ray --cacert ca.pem` against a provider on TLS from a private CA: the query actors run in
    other processes (the driver's trust is not theirs) and still reach it; the report equals the local run's."""
    from support.audit_loopback import loopback
    from support.tls import mint_private_ca

    from specguard.audit.simulate import build_app
    from specguard.web import http

    ca = mint_private_ca(tmp_path / "ca")
    previous = http.trust_cas(http.TrustedCAs(default=str(ca.ca)))  # what --cacert does in the driver
    try:
        with loopback(build_app(setup["ref"]), tls=ca) as url:
            local = run_audit(_config(setup, url), setup["base"] / "tls-local", reference=setup["ref"])
            on_ray = run_audit_ray(_config(setup, url), setup["base"] / "tls-ray", setup["options"],
                                   reference=setup["ref"])
    finally:
        http.trust_cas(previous)
    assert url.startswith("https://")
    assert on_ray["client"]["failures"] == 0 and on_ray["prompts"]["answered"] == 3, on_ray["client"]
    assert on_ray == local
