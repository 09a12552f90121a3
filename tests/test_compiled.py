"""``--compile``: static caches and ``torch.compile`` give the eager replies, reuse caches, and stop in a step."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from helpers import answer, greedy
from transformers import StaticCache

from jslm_chat.backends.inprocess.generation import loaded_model
from jslm_chat.backends.inprocess.loading import load_inprocess_backend
from jslm_chat.backends.inprocess.static_cache import (
    STATIC_STEP_TOKENS,
    static_cache_for,
    static_capacity,
    static_sizes,
)
from jslm_chat.model.backend import Conversation
from jslm_chat.model.prompt import Turn
from jslm_chat.settings import parse_settings

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = "あなたは役立つアシスタントです。"
QUESTIONS = ["日本の四季について教えてください。", "東京について教えて。", "京都のお寺は？"]
LONG_ANSWER = "日本の文化はとても奥が深く、季節の行事や食べ物、言葉の中に昔からの考え方が残っています。" * 16


@pytest.fixture(scope="module")
def eager(demo_model_path):
    return load_inprocess_backend(str(demo_model_path), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def compiled(demo_model_path):
    return load_inprocess_backend(str(demo_model_path), device="cpu", dtype="float32", compiled=True)


def test_compiled_decoding_gives_the_eager_replies_and_reuses_each_turn(eager, compiled):
    turns: list[Turn] = []
    for question in QUESTIONS:
        conversation = Conversation(SYSTEM, list(turns), question)
        expected, got = answer(eager, conversation, greedy(32)), answer(compiled, conversation, greedy(32))
        assert got.text == expected.text and got.new_tokens == 32
        assert got.reused_tokens == expected.reused_tokens
        turns.append(Turn(question, got.text))
    assert got.reused_tokens > 0
    assert compiled.runs_on == "cpu · float32 · compiled" and eager.runs_on == "cpu · float32"


def test_decoding_is_compiled_at_load_and_no_reply_compiles_again(compiled):
    """Loading compiles the first two cache sizes, after which one dynamic graph serves every size:
    no reply waits for a compilation (nor does a Stop)."""
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs >= 1
    for new_tokens in (16, 700, 1500):  # caches of 512, 1,024 and 2,048 tokens
        reply = answer(compiled, Conversation(SYSTEM, [], QUESTIONS[0]), greedy(new_tokens))
        assert reply.new_tokens == new_tokens
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


def test_without_a_working_compiler_decoding_stays_eager(demo_model_path, tmp_path):
    """A real compile failure (no C++ compiler for inductor) at load: logged, and replies run eager."""
    script = f"""
from jslm_chat.model.backend import Conversation
from jslm_chat.backends.inprocess.loading import load_inprocess_backend
from jslm_chat.model.params import GenerationParams
backend = load_inprocess_backend({str(demo_model_path)!r}, device="cpu", dtype="float32", compiled=True)
reply = backend.stream(Conversation("sys", [], "日本"), GenerationParams(8, 0.0, 1.0, 0, 1.0, 0, ignore_eos=True))
for _ in reply:
    pass
print(backend.runs_on, reply.new_tokens, reply.finish_reason)
"""
    no_compiler = {"CXX": str(tmp_path / "no-such-g++"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    environment = {**os.environ, **no_compiler}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT, env=environment
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "cpu · float32 8 length"
    assert "torch.compile failed; decoding stays eager" in done.stderr
    assert "InvalidCxxCompiler" in done.stderr  # the real fault's trace is kept


def test_a_longer_turn_moves_the_kept_cache_into_the_next_size(eager, compiled):
    compiled.close()  # no caches kept from earlier tests
    short = Conversation(SYSTEM, [], QUESTIONS[0])
    first = answer(compiled, short, greedy(32))
    longer = Conversation(SYSTEM, [Turn(QUESTIONS[0], first.text), Turn(QUESTIONS[1], LONG_ANSWER)], QUESTIONS[2])
    expected, got = answer(eager, longer, greedy(32)), answer(compiled, longer, greedy(32))
    assert got.prompt.num_tokens + 32 > STATIC_STEP_TOKENS
    assert got.reused_tokens > first.prompt.num_tokens - 2
    assert got.text == expected.text
    pool = loaded_model(compiled.model_key).caches
    with torch.inference_mode():  # where the app takes caches: a static cache's length is an inference tensor
        cache, _ = pool.take(got.prompt.token_ids)
    assert isinstance(cache, StaticCache) and cache.get_max_length() == 2 * STATIC_STEP_TOKENS


@pytest.mark.usefixtures("paced_generation")
def test_a_stop_ends_compiled_decoding_within_a_step(compiled):
    reply = compiled.stream(Conversation(SYSTEM, [], "長い話をしてください。"), greedy(400))
    consumer = iter(reply)
    next(consumer)
    at_stop = reply.new_tokens
    reply.stop()
    for _ in consumer:
        pass
    assert reply.finish_reason == "stopped"
    assert reply.new_tokens - at_stop <= 2


def test_static_sizes_double_up_to_the_context():
    assert [static_capacity(tokens, 4096) for tokens in (1, 512, 513, 1500, 4096)] == [512, 512, 1024, 2048, 4096]
    assert static_capacity(2100, 2500) == 2500  # a context that is not a doubling is its own last size


def test_a_kept_cache_too_small_is_copied_with_what_it_holds(demo_model_path):
    model = load_inprocess_backend(str(demo_model_path), device="cpu", dtype="float32").model
    kept = StaticCache(config=model.config, max_cache_len=STATIC_STEP_TOKENS)
    ids = torch.tensor([[(index * 31) % 2900 + 5 for index in range(300)]])
    with torch.inference_mode():
        model(input_ids=ids, cache=kept)
        assert static_cache_for(model.config, kept, 400) is kept
        grown = static_cache_for(model.config, kept, 600)
    assert grown.get_max_length() == 2 * STATIC_STEP_TOKENS and int(grown.get_seq_length()) == 300
    for old, new in zip(kept.layers, grown.layers, strict=True):
        torch.testing.assert_close(new.keys[..., :300, :], old.keys[..., :300, :], rtol=0, atol=0)


def test_compile_flag_and_environment():
    assert parse_settings([], {}).compile is False
    assert parse_settings(["--compile"], {}).compile is True
    assert parse_settings([], {"JSLM_COMPILE": "1"}).compile is True


def test_compiled_replies_run_in_one_long_lived_thread(compiled):
    """CUDA graphs are recorded per thread: replies one after another must reuse the same one."""
    for question in QUESTIONS:
        answer(compiled, Conversation(SYSTEM, [], question), greedy(4))
    assert [thread.name for thread in threading.enumerate() if thread.name.startswith("jslm-compiled")] == [
        "jslm-compiled-1"
    ]


def test_every_serving_thread_is_warmed_for_every_cache_size_with_three_steps(compiled, monkeypatch):
    """CUDA graphs are recorded per thread and per size: with ``concurrency`` 2 both serving threads
    decode three steps at every size at load (on a CPU the compiled code is shared: this is fast)."""
    from jslm_chat.backends.inprocess.backend import InProcessBackend
    from jslm_chat.backends.inprocess.generation import LoadedModel

    warmed: list[tuple[str, int, int]] = []
    decode = LoadedModel._decode

    def recorded(self, cache_size, steps):
        warmed.append((threading.current_thread().name, cache_size, steps))
        decode(self, cache_size, steps)

    monkeypatch.setattr(LoadedModel, "_decode", recorded)
    backend = InProcessBackend(
        compiled.model, compiled.tokenizer, compiled.preset, compiled.placement, compiled=True, concurrency=2
    )
    assert backend.compiled
    sizes = static_sizes(compiled.model.config.max_position_embeddings)
    assert len(sizes) >= 2 and sizes[-1] == compiled.model.config.max_position_embeddings
    threads = sorted({name for name, _, _ in warmed})
    assert len(threads) == 2
    assert sorted(warmed) == sorted((name, size, 3) for name in threads for size in sizes)


def test_static_sizes_are_the_sizes_replies_get():
    for context in (300, 512, 1000, 4096):
        assert static_sizes(context) == sorted({static_capacity(tokens, context) for tokens in range(1, context + 1)})
