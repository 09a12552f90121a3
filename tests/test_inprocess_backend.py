"""The engine on a tiny local Llama: streaming, stopping, errors, prompt budget."""

from __future__ import annotations

import itertools
import time

import pytest
import torch
from helpers import generation_threads

from jslm_chat.backends.inprocess import generation
from jslm_chat.backends.inprocess.backend import InProcessReply
from jslm_chat.backends.inprocess.loading import load_inprocess_backend
from jslm_chat.model.backend import Conversation, GenerationError
from jslm_chat.model.params import GenerationParams
from jslm_chat.model.prompt import PromptTooLongError, Turn

SYSTEM = "あなたは役立つアシスタントです。"


def sampling(max_new_tokens: int = 40, temperature: float = 0.8, seed: int | None = 1) -> GenerationParams:
    return GenerationParams(max_new_tokens, temperature, 0.95, 50, 1.1, seed)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return load_inprocess_backend(str(tiny_model_dir), device="cpu", dtype="float32")


@pytest.fixture
def three_turns() -> Conversation:
    turns = [Turn("こんにちは", "こんにちは！"), Turn("東京は？", "日本の首都です。")]
    return Conversation(SYSTEM, turns, "京都について教えて")


@pytest.mark.usefixtures("paced_generation")
def test_three_turn_conversation_streams_in_several_growing_chunks(engine, three_turns):
    reply = engine.stream(three_turns, sampling(max_new_tokens=40))
    chunks = list(reply)
    assert len(chunks) > 3
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(chunks))
    assert chunks[-1] == reply.text
    assert 0 < reply.new_tokens <= 40
    assert reply.finish_reason in ("eos", "length")
    assert reply.prompt.kept_turns == 2
    assert reply.prompt.token_ids.count(1) == 3  # one BOS per turn
    assert not generation_threads()


def test_a_fixed_seed_reproduces_the_reply_and_greedy_is_deterministic(engine, three_turns):
    first = list(engine.stream(three_turns, sampling(seed=42)))[-1]
    again = list(engine.stream(three_turns, sampling(seed=42)))[-1]
    other = list(engine.stream(three_turns, sampling(seed=43)))[-1]
    assert first == again
    assert first != other
    greedy = [list(engine.stream(three_turns, sampling(temperature=0, seed=None)))[-1] for _ in range(2)]
    assert greedy[0] == greedy[1]


def test_random_seed_is_recorded_so_the_reply_can_be_reproduced(engine, three_turns):
    reply = engine.stream(three_turns, sampling(seed=None))
    text = list(reply)[-1]
    assert isinstance(reply.seed, int)
    assert list(engine.stream(three_turns, sampling(seed=reply.seed)))[-1] == text


def test_closing_the_consumer_stops_the_thread_within_a_step(engine, three_turns):
    reply = engine.stream(three_turns, sampling(max_new_tokens=400, temperature=1.0))
    consumer = iter(reply)
    next(consumer)
    started = time.perf_counter()
    consumer.close()  # what Gradio does on Stop and on disconnect
    assert time.perf_counter() - started < 2.0
    assert not generation_threads()
    assert reply.finish_reason == "stopped"
    assert reply.new_tokens < 400


def test_with_block_stops_generation_when_the_caller_stops_early(engine, three_turns):
    with engine.stream(three_turns, sampling(max_new_tokens=400, temperature=1.0)) as reply:
        for _ in reply:
            break
    assert not generation_threads()
    assert reply.finish_reason == "stopped"


def test_an_exception_in_generation_reaches_the_consumer_and_the_next_request_works(engine, three_turns, monkeypatch):
    original = engine.model.generate

    def failing_generate(*args, **kwargs):
        kwargs["streamer"].put(torch.tensor([[5, 6]]))  # the prompt
        kwargs["streamer"].put(torch.tensor([[300]]))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine.model, "generate", failing_generate)
    reply = engine.stream(three_turns, sampling())
    with pytest.raises(GenerationError) as caught:
        list(reply)
    assert "GPU" in str(caught.value)
    assert "Out of GPU memory" in str(caught.value)
    assert reply.finish_reason == "error"
    assert not generation_threads()

    monkeypatch.setattr(engine.model, "generate", original)
    next_reply = engine.stream(three_turns, sampling(max_new_tokens=5))
    list(next_reply)
    assert next_reply.new_tokens > 0
    assert next_reply.finish_reason in ("eos", "length")


def test_other_generation_errors_name_their_cause(engine, three_turns, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("bad shape")

    monkeypatch.setattr(engine.model, "generate", broken)
    with pytest.raises(GenerationError, match="ValueError: bad shape"):
        list(engine.stream(three_turns, sampling()))


def test_stop_before_the_first_token_ends_a_long_prefill_within_a_chunk(engine, three_turns):
    long_history = Conversation(SYSTEM, [Turn("東京の話。" * 20, "京都の話。" * 20)] * 3, "続けて")
    reply = engine.stream(long_history, sampling(max_new_tokens=40))
    assert reply.prompt.num_tokens > 2 * generation.PREFILL_CHUNK_TOKENS // 4
    reply.stop()  # before iteration: nothing runs at all
    assert list(reply) == []
    assert reply.finish_reason == "stopped"
    assert not generation_threads()


def test_truncation_drops_whole_old_turns(engine):
    turns = [Turn(f"質問{i}：" + "東京と京都の話。" * 8, f"回答{i}：" + "日本の首都です。" * 8) for i in range(12)]
    prompt = engine.prepare(Conversation(SYSTEM, turns, "最後の質問"), max_new_tokens=128)
    assert prompt.num_tokens <= engine.context_length - 128
    assert prompt.dropped_turns > 0
    assert prompt.dropped_turns + prompt.kept_turns == 12
    assert f"質問{prompt.dropped_turns}：" in prompt.text
    assert f"質問{prompt.dropped_turns - 1}：" not in prompt.text
    assert prompt.text.startswith(f"<s>[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\n質問{prompt.dropped_turns}：")


def test_a_message_that_alone_does_not_fit_raises_before_any_thread_starts(engine):
    with pytest.raises(PromptTooLongError):
        engine.stream(Conversation(SYSTEM, [], "長い。" * 400), sampling(max_new_tokens=128))
    assert not generation_threads()


def test_reply_reports_speed_and_latency(engine, three_turns):
    reply = engine.stream(three_turns, GenerationParams(20, 0.8, 0.95, 50, 1.1, 1, ignore_eos=True))
    list(reply)
    assert reply.new_tokens == 20
    assert reply.tokens_per_second and reply.tokens_per_second > 0
    assert reply.seconds_to_first_token is not None and reply.seconds_to_first_token >= 0


def test_a_reply_iterates_once(engine, three_turns):
    reply = engine.stream(three_turns, sampling(max_new_tokens=3))
    list(reply)
    with pytest.raises(RuntimeError):
        list(reply)
    assert isinstance(reply, InProcessReply)


@pytest.mark.usefixtures("endless_replies", "paced_generation")
def test_a_slow_consumer_gets_fewer_bigger_chunks_and_the_same_text(engine, three_turns):
    fast = list(engine.stream(three_turns, sampling(max_new_tokens=120, seed=9)))
    slow = []
    for text in engine.stream(three_turns, sampling(max_new_tokens=120, seed=9)):
        slow.append(text)
        time.sleep(0.2)  # far slower than a decoding step, even on a loaded machine
    assert slow[-1] == fast[-1]
    assert len(slow) < len(fast) / 2


def test_top_k_one_and_a_tiny_top_p_sample_exactly_the_greedy_reply(engine, three_turns):
    greedy = list(engine.stream(three_turns, GenerationParams(24, 0.0, 1.0, 0, 1.0, ignore_eos=True)))[-1]
    for top_p, top_k in ((1.0, 1), (1e-6, 0)):  # one candidate left: sampling has nothing to choose
        sampled = list(engine.stream(three_turns, GenerationParams(24, 1.5, top_p, top_k, 1.0, 7, ignore_eos=True)))
        assert sampled[-1] == greedy
    wild = list(engine.stream(three_turns, GenerationParams(24, 1.5, 1.0, 0, 1.0, 7, ignore_eos=True)))[-1]
    assert wild != greedy  # top_k 0 is off: sampling from the whole vocabulary (never the default top-50)


def test_repetition_penalty_and_max_new_tokens_change_the_reply(engine, three_turns):
    plain = engine.stream(three_turns, GenerationParams(60, 0.0, 1.0, 0, 1.0, ignore_eos=True))
    penalised = engine.stream(three_turns, GenerationParams(60, 0.0, 1.0, 0, 2.0, ignore_eos=True))
    assert list(plain)[-1] != list(penalised)[-1]
    assert plain.new_tokens == penalised.new_tokens == 60


def test_top_k_zero_stays_zero_in_the_generation_config(engine):
    config = generation.generation_config(engine.tokenizer, engine.model, GenerationParams(4, 0.3, 0.8, 0, 1.3, 1))
    assert (config.top_k, config.top_p, config.temperature, config.repetition_penalty) == (0, 0.8, 0.3, 1.3)
