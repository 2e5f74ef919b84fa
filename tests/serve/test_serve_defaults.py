"""`specguard serve` with no drafter or thread options: the chosen fast configuration is printed in the banner,
served, and answers exactly what plain decoding answers (issue 23: fast by default; issue 22: threads)."""

from __future__ import annotations

import httpx
import pytest
from support.servers import free_port, specguard_cmd, start_process

from specguard.defaults import available_cpus, choose_defaults
from specguard.drafters.base import NoDrafter
from specguard.engine.speculative import SpeculativeEngine
from specguard.transcript import SamplingParams

pytestmark = pytest.mark.model

QUESTION = "List three uses of Python dictionaries."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    home = tmp_path_factory.mktemp("home-defaults")
    srv = start_process(specguard_cmd("serve", "--port", str(port), "--log-level", "warning"), port,
                        env={"SPECGUARD_HOME": str(home)}, timeout=300)
    yield srv
    srv.stop()


def test_banner_shows_the_chosen_drafter_and_thread_split(server):
    expected = choose_defaults(available_cpus(), True)  # make install builds llama.cpp: it is available
    assert expected.drafter == "llamacpp"
    banner = server.output()
    assert f"defaults       {expected.describe()}" in banner, banner
    assert "drafter        llamacpp" in banner, banner
    assert httpx.get(server.url + "/health", timeout=10).json()["drafter"] == "llamacpp"


def test_default_configuration_answers_what_plain_decoding_answers(server, default_model):
    body = httpx.post(server.url + "/v1/chat/completions", timeout=300, json={
        "model": "smollm2-135m", "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 32, "temperature": 0, "ignore_eos": True}).json()
    prompt = default_model.encode_chat([{"role": "user", "content": QUESTION}])
    plain = SpeculativeEngine(default_model, NoDrafter()).generate(prompt, SamplingParams(max_tokens=32,
                                                                                          ignore_eos=True))
    assert body["choices"][0]["message"]["content"] == plain.text
    assert body["usage"]["completion_tokens"] == len(plain.output_ids)
    assert body["specguard"]["receipt"]
