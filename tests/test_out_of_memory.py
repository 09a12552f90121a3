"""Out of memory during a reply: the failed attempt and every kept cache are freed, the reply goes
on once (from the tokens already streamed), and only a second failure reaches the user.

The failure is raised where a real allocation fails, inside the model's forward pass (a forward
hook on its first decoder layer), so the whole real path runs: prefill, ``generate()``, streamer,
pool and recovery.
"""

from __future__ import annotations

import pytest
import torch
from helpers import answer, greedy

from jslm_chat.backends.inprocess.generation import loaded_model
from jslm_chat.backends.inprocess.loading import load_inprocess_backend
from jslm_chat.backends.inprocess.memory import cache_pool_budget
from jslm_chat.model.backend import Conversation, GenerationError
from jslm_chat.model.prompt import Turn

SYSTEM = "あなたは役立つアシスタントです。丁寧な日本語で、短く答えてください。"
HISTORY = [Turn("東京について教えて。", "東京は日本の首都です。" * 3)]


@pytest.fixture(scope="module")
def fresh(demo_model_path):
    return load_inprocess_backend(str(demo_model_path), device="cpu", dtype="float32", cache_slots=0)


@pytest.fixture
def reusing(demo_model_path):
    return load_inprocess_backend(str(demo_model_path), device="cpu", dtype="float32", cache_slots=3)


class FailingForwards:
    """Raises CUDA's out-of-memory error in the given forward passes of the model (counted from 1)."""

    def __init__(self, model: torch.nn.Module, failing: set[int]) -> None:
        self.calls = 0
        self.failing = failing
        self.handle = model.model.layers[0].register_forward_hook(self)

    def __call__(self, *args: object) -> None:
        self.calls += 1
        if self.calls in self.failing:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def fill_pool(backend) -> Conversation:
    """Two kept caches: another visitor's and the conversation that is then continued."""
    answer(backend, Conversation("別の人の会話です。" * 3, [], "こんにちは。"), greedy(8))
    conversation = Conversation(SYSTEM, HISTORY, "京都のお寺は？")
    answer(backend, Conversation(SYSTEM, [], HISTORY[0].user), greedy(8))
    assert len(loaded_model(backend.model_key).caches) == 2
    return conversation


@pytest.mark.parametrize("failing_forward", [1, 6], ids=["in-prefill", "after-five-tokens"])
def test_one_out_of_memory_frees_the_pool_and_the_reply_still_answers(reusing, fresh, failing_forward):
    conversation = fill_pool(reusing)
    failures = FailingForwards(reusing.model, {failing_forward})
    try:
        reply = answer(reusing, conversation, greedy(24))
    finally:
        failures.handle.remove()
    assert failures.calls > failing_forward  # it failed, and went on after
    assert reply.text == answer(fresh, conversation, greedy(24)).text
    assert (reply.new_tokens, reply.finish_reason) == (24, "length")
    assert reply.reused_tokens == 0  # the retry found the pool emptied
    assert len(loaded_model(reusing.model_key).caches) == 1  # only this reply's own cache


def test_a_second_out_of_memory_tells_the_user_what_to_do(reusing):
    conversation = fill_pool(reusing)
    failures = FailingForwards(reusing.model, {1, 2})
    try:
        reply = reusing.stream(conversation, greedy(24))
        with pytest.raises(GenerationError) as caught:
            list(reply)
    finally:
        failures.handle.remove()
    message = str(caught.value)
    assert "GPU のメモリが足りません" in message and "Out of GPU memory" in message
    assert "new conversation" in message and "max_new_tokens" not in message
    assert reply.finish_reason == "error"
    assert len(loaded_model(reusing.model_key).caches) == 0
    assert answer(reusing, conversation, greedy(8)).new_tokens == 8  # and the next request works


def test_the_pool_budget_leaves_a_full_context_cache_per_running_reply_and_a_margin_free():
    gib, per_token = 2**30, 2**19  # the 7B in float16
    on_24_gb = cache_pool_budget(10 * gib, 24 * 10**9, per_token, 4096)
    assert on_24_gb == 10 * gib - 2 * gib - 24 * 10**9 // 20
    assert cache_pool_budget(10 * gib, 24 * 10**9, per_token, 4096, running_replies=2) == on_24_gb - 2 * gib
    assert cache_pool_budget(2 * gib, 16 * 10**9, per_token, 4096) == 0  # a 16 GB card: nothing kept


def test_on_the_cpu_the_pool_is_bounded_by_its_count_alone(reusing):
    assert loaded_model(reusing.model_key).caches.budget_bytes is None
    assert loaded_model(reusing.model_key).caches.slots == 3
