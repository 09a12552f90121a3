"""Models with a sliding attention window (Mistral-style, as the gamma preset): every turn answers,
past the window too, and reuses a kept cache only where its sliding layers still hold what it needs."""

from __future__ import annotations

import pytest
from helpers import answer, greedy

from jslm_chat.backends.inprocess.loading import load_inprocess_backend
from jslm_chat.model.backend import Conversation
from jslm_chat.model.prompt import Turn

WINDOW = 64
SYSTEM = "あなたは役立つアシスタントです。丁寧な日本語で、短く答えてください。"
QUESTIONS = ["東京について教えて。", "京都のお寺は？", "富士山の高さは？", "おすすめの食べ物は？", "ありがとう。"]


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory, llama_tokenizer):
    """A random-weight MistralForCausalLM (2 layers, hidden 64) whose window is 64 tokens."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=len(llama_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=1024,
        sliding_window=WINDOW,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    directory = tmp_path_factory.mktemp("tiny_mistral")
    MistralForCausalLM(config).save_pretrained(directory)
    llama_tokenizer.save_pretrained(directory)
    return directory


def backend(directory, slots):
    return load_inprocess_backend(str(directory), device="cpu", dtype="float32", cache_slots=slots)


def test_every_turn_past_the_window_answers_as_without_reuse(mistral_dir):
    reusing, fresh = backend(mistral_dir, 2), backend(mistral_dir, 0)
    turns: list[Turn] = []
    for question in QUESTIONS:
        conversation = Conversation(SYSTEM, list(turns), question)
        reply = answer(reusing, conversation, greedy(20))
        assert reply.text == answer(fresh, conversation, greedy(20)).text
        assert reply.new_tokens == 20
        turns.append(Turn(question, reply.text))
    assert reply.prompt.num_tokens > 3 * WINDOW


def test_a_retry_past_the_window_skips_the_uncroppable_cache_and_answers_the_same(mistral_dir):
    reusing, fresh = backend(mistral_dir, 2), backend(mistral_dir, 0)
    history = [Turn(question, "はい、そうです。" * 4) for question in QUESTIONS[:3]]
    conversation = Conversation(SYSTEM, history, QUESTIONS[3])
    first = answer(reusing, conversation, greedy(20))
    assert first.prompt.num_tokens > WINDOW
    retry = answer(reusing, conversation, greedy(20))  # would crop the reply off: impossible past the window
    assert retry.reused_tokens == 0
    assert retry.text == first.text == answer(fresh, conversation, greedy(20)).text


def test_below_the_window_a_kept_cache_is_cropped_and_reused(mistral_dir):
    wide = backend(mistral_dir, 2)
    wide.model.config.sliding_window = 4096  # the same weights with a window wider than any prompt here
    conversation = Conversation(SYSTEM, [Turn(QUESTIONS[0], "はい。")], QUESTIONS[1])
    first = answer(wide, conversation, greedy(8))
    retry = answer(wide, conversation, greedy(8))
    assert retry.reused_tokens == retry.prompt.num_tokens - 1
    assert retry.text == first.text
