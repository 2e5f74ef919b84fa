"""`choose_defaults`: the fast lossless configuration `serve` and `generate` start with, and its thread split."""

from __future__ import annotations

import pytest

from specguard import defaults
from specguard.defaults import MAX_TORCH_THREADS, choose_defaults, llamacpp_drafter_available


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 8, 16, 64, 256])
@pytest.mark.parametrize("llama", [True, False])
def test_threads_never_oversubscribe_the_cpus(cpus, llama):
    chosen = choose_defaults(cpus, llama)
    drafter_threads = chosen.drafter_threads if chosen.draft_ahead else 0
    assert chosen.torch_threads >= 1
    assert chosen.torch_threads + (drafter_threads or 0) <= max(cpus, 1)
    assert chosen.torch_threads <= MAX_TORCH_THREADS
    if cpus >= 3:  # one core stays free for the server, receipts and the OS
        assert chosen.torch_threads + (drafter_threads or 0) <= cpus - 1


def test_llamacpp_drafts_ahead_on_its_own_core_when_installed():
    two = choose_defaults(2, True)
    assert (two.drafter, two.draft_ahead, two.torch_threads, two.drafter_threads) == ("llamacpp", True, 1, 1)
    assert two.chosen == ("drafter", "drafter threads", "threads")
    assert two.drafter_options() == {}  # chosen values leave the policy's [drafter] table in charge
    eight = choose_defaults(8, True)
    assert (eight.torch_threads, eight.drafter_threads) == (6, 1)
    one = choose_defaults(1, True)  # one CPU: the drafter drafts in turn with the target, not beside it
    assert (one.drafter, one.draft_ahead, one.torch_threads) == ("llamacpp", False, 1)


def test_ngram_without_llamacpp_and_one_spare_core():
    two = choose_defaults(2, False)
    assert (two.drafter, two.torch_threads, two.drafter_threads, two.draft_ahead) == ("ngram", 1, None, None)
    assert choose_defaults(4, False).torch_threads == 3
    assert choose_defaults(64, False).torch_threads == MAX_TORCH_THREADS


def test_what_the_user_gives_wins():
    given = choose_defaults(2, True, drafter="none", threads=2)
    assert (given.drafter, given.torch_threads, given.drafter_threads, given.chosen) == ("none", 2, None, ())
    split = choose_defaults(8, True, drafter_threads=3)
    assert (split.torch_threads, split.drafter_threads) == (4, 3)
    assert split.drafter_options() == {"n_threads": 3}  # a flag overrides the policy
    assert split.chosen == ("drafter", "threads")
    assert choose_defaults(2, False, drafter="llamacpp").drafter == "llamacpp"  # fails later, naming the install


def test_other_engines_draft_nothing_and_keep_their_thread_default():
    llama = choose_defaults(2, True, engine="llamacpp")
    assert (llama.drafter, llama.drafter_threads, llama.draft_ahead, llama.engine_options()) == ("ngram", None, None, {})
    assert "engine llamacpp its default threads" in llama.describe()
    given = choose_defaults(2, True, engine="llamacpp", threads=1)
    assert given.engine_options() == {"threads": 1} and given.torch_threads == 1
    assert choose_defaults(4, True, engine="builtin").drafter == "llamacpp"


def test_describe_names_the_choice_and_how_to_override_it():
    line = choose_defaults(2, True).describe()
    assert line.startswith("drafter llamacpp (draft-ahead); torch 1 thread + drafter 1 thread on 2 CPUs")
    assert "--threads" in line and "chosen: drafter, drafter threads, threads" in line
    assert "chosen" not in choose_defaults(2, True, drafter="ngram", threads=1).describe()


def test_llamacpp_availability_needs_the_package_and_a_gguf(monkeypatch, tmp_path):
    monkeypatch.setattr(defaults.importlib.util, "find_spec", lambda name: None)
    assert not llamacpp_drafter_available(None)
    monkeypatch.setattr(defaults.importlib.util, "find_spec", lambda name: object())
    assert not llamacpp_drafter_available(str(tmp_path))  # a model directory has no GGUF
    assert not llamacpp_drafter_available(str(tmp_path / "missing.gguf"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert llamacpp_drafter_available(str(gguf))
