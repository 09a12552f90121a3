"""``--compile``: static caches and ``torch.compile`` give the eager replies, reuse caches, and stop in a step."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from helpers import answer, greedy
from transformers import LlamaConfig, MistralConfig, MistralForCausalLM, StaticCache

from jslm_chat.backends.inprocess.generation import loaded_model
from jslm_chat.backends.inprocess.growing_cache import new_cache
from jslm_chat.backends.inprocess.loading import load_inprocess_backend
from jslm_chat.backends.inprocess.memory import cache_bytes_per_token
from jslm_chat.backends.inprocess.static_cache import (
    STATIC_STEP_TOKENS,
    ThreadCaches,
    compile_blocker,
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


def test_a_longer_turn_continues_its_kept_cache_in_the_next_size(eager, compiled):
    """The kept prefix is copied into the thread's 1,024-token cache; the pool keeps a compact copy."""
    compiled.close()  # no caches kept from earlier tests
    short = Conversation(SYSTEM, [], QUESTIONS[0])
    first = answer(compiled, short, greedy(32))
    longer = Conversation(SYSTEM, [Turn(QUESTIONS[0], first.text), Turn(QUESTIONS[1], LONG_ANSWER)], QUESTIONS[2])
    expected, got = answer(eager, longer, greedy(32)), answer(compiled, longer, greedy(32))
    assert got.prompt.num_tokens + 32 > STATIC_STEP_TOKENS
    assert got.reused_tokens > first.prompt.num_tokens - 2
    assert got.text == expected.text
    loaded = loaded_model(compiled.model_key)
    [thread] = loaded.static_caches
    with torch.inference_mode():  # where the app uses caches: a static cache's length is an inference tensor
        used = thread.caches[2 * STATIC_STEP_TOKENS]
        assert int(used.get_seq_length()) == got.prompt.num_tokens + 32 - 1  # the last token is never fed back
        kept, held = loaded.caches.take(got.prompt.token_ids)
    assert not isinstance(kept, StaticCache) and held == got.prompt.num_tokens - 1
    for static_layer, kept_layer in zip(used.layers, kept.layers, strict=True):
        torch.testing.assert_close(kept_layer.keys, static_layer.keys[..., :held, :], rtol=0, atol=0)


def test_each_size_decodes_in_one_cache_object_at_one_address_reply_after_reply(compiled):
    """No reply allocates a static cache: CUDA graphs recorded at start-up stay valid (no re-recording)."""
    loaded = loaded_model(compiled.model_key)
    [thread] = loaded.static_caches
    before = {size: (cache, [layer.keys.data_ptr() for layer in cache.layers]) for size, cache in thread.caches.items()}
    for question, new_tokens in [(QUESTIONS[0], 8), (QUESTIONS[1], 8), (QUESTIONS[2], 600), (QUESTIONS[0], 8)]:
        reply = answer(compiled, Conversation(SYSTEM, [], question), greedy(new_tokens))
        size = static_capacity(reply.prompt.num_tokens + new_tokens, compiled.context_length)
        with torch.inference_mode():
            assert int(thread.caches[size].get_seq_length()) == reply.prompt.num_tokens + new_tokens - 1
    assert loaded.static_caches == [thread]
    after = {size: (cache, [layer.keys.data_ptr() for layer in cache.layers]) for size, cache in thread.caches.items()}
    assert after == before and {size for size in after} == {512, 1024, 2048}


def test_a_reply_in_a_static_cache_reset_after_a_longer_one_is_the_fresh_reply(eager, compiled):
    """Every size is a view of one buffer: after a 1,024-token reply the 512-token cache starts from
    what that reply left; reset in place, it gives the reply of a fresh cache (the eager one)."""
    conversation = Conversation(SYSTEM, [], QUESTIONS[1])
    answer(compiled, Conversation(SYSTEM, [], "長い話をしてください。"), greedy(600))
    compiled.close()  # nothing kept: the reply is decoded from an emptied cache
    assert answer(compiled, conversation, greedy(24)).text == answer(eager, conversation, greedy(24)).text


def test_a_thread_holds_one_full_context_cache_shared_by_its_sizes():
    config = LlamaConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048,
    )  # fmt: skip
    with torch.inference_mode():
        thread = ThreadCaches(config, 2048, torch.float32, torch.device("cpu"))
        largest = thread.caches[2048]
        assert sorted(thread.caches) == [512, 1024, 2048]
        assert thread.nbytes == cache_bytes_per_token(config, 4) * 2048
        for size, cache in thread.caches.items():
            for layer, full in zip(cache.layers, largest.layers, strict=True):
                assert layer.keys.shape[-2] == size and layer.keys.data_ptr() == full.keys.data_ptr()
                assert layer.values.data_ptr() == full.values.data_ptr()
        kept = new_cache(config)
        states = torch.randn(1, 2, 300, 16)
        for layer in kept.layers:
            layer.update(states, -states)
        holding = thread.holding(kept, 600)
        assert holding is thread.caches[1024] and int(holding.get_seq_length()) == 300
        torch.testing.assert_close(holding.layers[1].values[..., :300, :], -states, rtol=0, atol=0)
        emptied = thread.holding(None, 100)
        assert emptied is thread.caches[512] and int(emptied.get_seq_length()) == 0
        assert not emptied.layers[0].keys.any()
        with pytest.raises(ValueError, match="do not fit the context of 2048"):
            thread.holding(None, 2049)


def test_compile_is_kept_off_for_a_model_with_a_sliding_window(tmp_path, llama_tokenizer, caplog):
    """transformers' static sliding layers roll their buffer and count in a Python int: off, said once."""
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=len(llama_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=1024, sliding_window=64,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    MistralForCausalLM(config).save_pretrained(tmp_path)
    llama_tokenizer.save_pretrained(tmp_path)
    assert "sliding-window" in compile_blocker(MistralForCausalLM(config))
    with caplog.at_level(logging.WARNING):
        backend = load_inprocess_backend(str(tmp_path), device="cpu", dtype="float32", compiled=True)
    assert not backend.compiled and backend.runs_on == "cpu · float32"
    assert "--compile is off, decoding runs eagerly: " in caplog.text and "sliding-window" in caplog.text
    assert answer(backend, Conversation(SYSTEM, [], QUESTIONS[0]), greedy(8)).new_tokens == 8


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


def test_every_serving_thread_is_warmed_for_every_cache_size_with_three_steps(compiled, monkeypatch, caplog):
    """CUDA graphs are recorded per thread and per size: with ``concurrency`` 2 both serving threads
    allocate their static caches and decode three steps at every size at load (on a CPU the
    compiled code is shared: this is fast), before the pool's budget is measured."""
    from jslm_chat.backends.inprocess.backend import InProcessBackend
    from jslm_chat.backends.inprocess.generation import LoadedModel

    warmed: list[tuple[str, int, int]] = []
    decode = LoadedModel._decode

    def recorded(self, cache_size, steps):
        warmed.append((threading.current_thread().name, cache_size, steps))
        decode(self, cache_size, steps)

    monkeypatch.setattr(LoadedModel, "_decode", recorded)
    with caplog.at_level(logging.INFO):
        backend = InProcessBackend(
            compiled.model, compiled.tokenizer, compiled.preset, compiled.placement, compiled=True, concurrency=2
        )
    assert backend.compiled
    context = backend.context_length
    full_context = cache_bytes_per_token(compiled.model.config, 4) * context
    assert [caches.nbytes for caches in loaded_model(backend.model_key).static_caches] == [full_context] * 2
    graphs = f"{len(static_sizes(context))} cache sizes (512, 1,024, 2,048 tokens) × 2 serving threads: at most 6 CUDA"
    assert graphs in caplog.text
    sizes = static_sizes(compiled.model.config.max_position_embeddings)
    assert len(sizes) >= 2 and sizes[-1] == compiled.model.config.max_position_embeddings
    threads = sorted({name for name, _, _ in warmed})
    assert len(threads) == 2
    assert sorted(warmed) == sorted((name, size, 3) for name in threads for size in sizes)


def test_static_sizes_are_the_sizes_replies_get():
    for context in (300, 512, 1000, 4096):
        assert static_sizes(context) == sorted({static_capacity(tokens, context) for tokens in range(1, context + 1)})


@pytest.mark.usefixtures("paced_generation")
def test_replies_at_the_same_time_decode_in_their_own_threads_caches(eager, compiled):
    """With ``concurrency`` 2, a reply that starts while another decodes runs in the second warmed
    thread, in that thread's caches: both give the eager replies and no third thread is made."""
    from jslm_chat.backends.inprocess.backend import InProcessBackend

    backend = InProcessBackend(
        compiled.model, compiled.tokenizer, compiled.preset, compiled.placement, compiled=True, concurrency=2
    )
    loaded = loaded_model(backend.model_key)
    long, short = Conversation(SYSTEM, [], "長い話をしてください。"), Conversation(SYSTEM, [], QUESTIONS[2])
    running = backend.stream(long, greedy(400))
    texts = iter(running)
    next(texts)
    second = answer(backend, short, greedy(24))
    assert running.finish_reason is None  # the long reply was still decoding
    for _ in texts:
        pass
    assert running.text == answer(eager, long, greedy(400)).text
    assert second.text == answer(eager, short, greedy(24)).text
    with torch.inference_mode():
        held = sorted(int(caches.caches[STATIC_STEP_TOKENS].get_seq_length()) for caches in loaded.static_caches)
    assert held == sorted([second.prompt.num_tokens + 24 - 1, running.prompt.num_tokens + 400 - 1])
