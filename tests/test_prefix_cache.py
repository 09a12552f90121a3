"""KV-cache reuse across turns: the same greedy replies as without reuse, and a bounded pool.

The correctness tests run the demo model twice side by side: a backend that reuses caches and one
with ``cache_slots=0`` that prefills every prompt from scratch. With greedy decoding their replies
must be the same text at every step of a chat, after Retry, Undo, an edit and dropped old turns.
The pool's eviction logic is also tested on its own with a small stand-in cache.
"""

from __future__ import annotations

import gc
import itertools
import threading
import weakref
from types import SimpleNamespace

import pytest
import torch
from helpers import answer, greedy
from transformers import DynamicCache

from jslm_chat.backends.inprocess.generation import loaded_model
from jslm_chat.backends.inprocess.loading import load_inprocess_backend
from jslm_chat.backends.inprocess.prefix_cache import (
    MIN_REUSED_TOKENS,
    VALUE_HALF_LIFE_SECONDS,
    PrefixCachePool,
    cache_nbytes,
    common_prefix_length,
)
from jslm_chat.model.backend import Backend, Conversation, ReplyStream
from jslm_chat.model.prompt import Turn

SYSTEM = "あなたは役立つアシスタントです。"
SHARED_SYSTEM = f"{SYSTEM}丁寧な日本語で、短く答えてください。"  # the start every chat of a deployment shares
QUESTIONS = [
    "日本の四季について教えてください。",
    "東京について教えて。",
    "京都のお寺は？",
    "富士山の高さは？",
    "おすすめの食べ物は？",
    "「情けは人のためならず」の意味は？",
    "ひらがなとカタカナの違いは？",
    "散歩に行きましょう！",
    "今日はいい天気ですね。",
    "ありがとうございました。",
]
LONG_USER = "日本の文化について、歴史と今の暮らしの両方から詳しく教えてください。" * 6
LONG_ANSWER = "日本の文化はとても奥が深く、季節の行事や食べ物、言葉の中に昔からの考え方が残っています。" * 6


@pytest.fixture(scope="module")
def fresh(demo_model_path):
    """The demo model that never reuses a cache: the reference replies."""
    return load_inprocess_backend(str(demo_model_path), device="cpu", dtype="float32", cache_slots=0)


@pytest.fixture(scope="module")
def reusing_backend(demo_model_path):
    return load_inprocess_backend(str(demo_model_path), device="cpu", dtype="float32", cache_slots=3)


@pytest.fixture
def one_slot(demo_model_path):
    """The demo model keeping one conversation's cache."""
    return load_inprocess_backend(str(demo_model_path), device="cpu", dtype="float32", cache_slots=1)


@pytest.fixture
def reusing(reusing_backend):
    """The demo model reusing up to 3 caches, starting each test with an empty pool."""
    reusing_backend.close()
    yield reusing_backend
    reusing_backend.close()


def pool_of(backend: Backend) -> PrefixCachePool:
    return loaded_model(backend.model_key).caches


def same_reply(reusing: Backend, fresh: Backend, conversation: Conversation, **params: object) -> ReplyStream:
    """The reply with reuse, after checking it is the reply without reuse."""
    reply = answer(reusing, conversation, greedy(**params))  # type: ignore[arg-type]
    reference = answer(fresh, conversation, greedy(**params))  # type: ignore[arg-type]
    assert reference.reused_tokens == 0
    assert reply.text == reference.text
    assert reply.prompt.token_ids == reference.prompt.token_ids
    return reply


def chat(
    reusing: Backend, fresh: Backend, questions: list[str], system: str = SYSTEM
) -> tuple[list[Turn], list[ReplyStream]]:
    """A growing chat, each reply checked against the reference; the turns and the replies."""
    turns: list[Turn] = []
    replies = []
    for question in questions:
        reply = same_reply(reusing, fresh, Conversation(system, list(turns), question))
        turns.append(Turn(question, reply.text))
        replies.append(reply)
    return turns, replies


def test_ten_turn_chat_is_identical_with_reuse_and_each_turn_reuses_the_previous_prompt(reusing, fresh):
    _, replies = chat(reusing, fresh, QUESTIONS)
    assert any(reply.text for reply in replies)
    assert replies[0].reused_tokens == 0  # turn 1: nothing cached yet
    for earlier, later in itertools.pairwise(replies):
        assert later.reused_tokens >= earlier.prompt.num_tokens  # the whole earlier prompt, and more
        assert later.reused_tokens < later.prompt.num_tokens  # the last token is always prefilled
    assert replies[-1].prompt.num_tokens - replies[-1].reused_tokens < replies[-1].prompt.num_tokens / 4


def test_retry_reuses_all_but_the_last_prompt_token_and_gives_the_same_reply(reusing, fresh):
    turns, _ = chat(reusing, fresh, QUESTIONS[:3])
    conversation = Conversation(SYSTEM, turns, QUESTIONS[3])
    first = same_reply(reusing, fresh, conversation)
    retry = same_reply(reusing, fresh, conversation)
    assert retry.reused_tokens == retry.prompt.num_tokens - 1
    assert retry.text == first.text


def test_undo_reuses_the_shortened_history(reusing, fresh):
    turns, replies = chat(reusing, fresh, QUESTIONS[:5])
    shortened = same_reply(reusing, fresh, Conversation(SYSTEM, turns[:2], "では、大阪は？"))
    shared = common_prefix_length(replies[-1].prompt.token_ids, shortened.prompt.token_ids)
    assert shared > replies[1].prompt.num_tokens  # the two kept turns, up to the new message
    assert shortened.reused_tokens == shared


def test_an_edited_earlier_message_reuses_only_what_comes_before_it(reusing, fresh):
    turns, replies = chat(reusing, fresh, QUESTIONS[:4])
    edited = [*turns[:2], Turn("大阪について教えて。", turns[2].assistant), turns[3]]
    reply = same_reply(reusing, fresh, Conversation(SYSTEM, edited, QUESTIONS[4]))
    shared = common_prefix_length(replies[-1].prompt.token_ids, reply.prompt.token_ids)
    assert replies[1].prompt.num_tokens < shared < replies[2].prompt.num_tokens
    assert reply.reused_tokens == shared


def logits_from(model: object, token_ids: list[int], cache: object, start: int) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([token_ids[start:]]), cache=cache).logits[0]  # type: ignore[operator]


@pytest.mark.parametrize("change", ["edit", "drop"])
def test_a_cache_taken_from_the_pool_holds_exactly_the_shared_prefix(reusing, change):
    """The keys and values of a cropped cache are those of the new prompt's first tokens: the model
    continues from it to the same logits as over the whole prompt (a cache holding stale tokens
    past the shared prefix would not)."""
    long = change == "drop"
    system = f"{SYSTEM}丁寧な日本語で、短く答えてください。"
    turns = [Turn(f"{i}: {LONG_USER if long else QUESTIONS[i]}", LONG_ANSWER) for i in range(12 if long else 4)]
    before = answer(reusing, Conversation(system, turns, QUESTIONS[5]))
    changed = [*turns, Turn(LONG_USER, LONG_ANSWER)] if long else [*turns[:2], Turn("大阪は？", LONG_ANSWER), turns[3]]
    prompt = reusing.prepare(Conversation(system, changed, QUESTIONS[5]), greedy().max_new_tokens)
    assert prompt.dropped_turns > before.prompt.dropped_turns if long else prompt.dropped_turns == 0
    cache, reused = pool_of(reusing).take(prompt.token_ids)
    assert reused == common_prefix_length(before.prompt.token_ids, prompt.token_ids) >= MIN_REUSED_TOKENS
    assert cache.get_seq_length() == reused < prompt.num_tokens - 20
    model = reusing.model
    whole = logits_from(model, prompt.token_ids, DynamicCache(config=model.config), 0)
    torch.testing.assert_close(
        logits_from(model, prompt.token_ids, cache, reused), whole[reused:], atol=1e-4, rtol=1e-4
    )


def test_dropped_old_turns_change_the_kept_prefix_and_the_reply_stays_the_same(reusing, fresh):
    history = [Turn(f"{index}: {LONG_USER}", LONG_ANSWER) for index in range(12)]
    first = same_reply(reusing, fresh, Conversation(SYSTEM, history, QUESTIONS[0]))
    assert first.prompt.dropped_turns > 0
    longer = [*history, Turn(QUESTIONS[0], first.text), Turn(LONG_USER, LONG_ANSWER)]
    second = same_reply(reusing, fresh, Conversation(SYSTEM, longer, QUESTIONS[1]))
    assert second.prompt.dropped_turns > first.prompt.dropped_turns
    shared = common_prefix_length(first.prompt.token_ids, second.prompt.token_ids)
    assert shared < first.prompt.num_tokens / 10  # only the system prompt is still in front
    assert second.reused_tokens == (shared if shared >= MIN_REUSED_TOKENS else 0)


def test_another_conversation_reuses_nothing(reusing, fresh):
    chat(reusing, fresh, QUESTIONS[:2])
    other = same_reply(reusing, fresh, Conversation("", [], "こんにちは。"))
    assert other.reused_tokens == 0


def test_a_stopped_reply_leaves_a_cache_that_still_gives_the_same_reply(reusing, fresh):
    conversation = Conversation(SYSTEM, [Turn(QUESTIONS[0], LONG_ANSWER)], QUESTIONS[1])
    stopped = reusing.stream(conversation, greedy(200, ignore_eos=True))
    pieces = iter(stopped)
    next(pieces)
    stopped.stop()
    for _ in pieces:
        pass
    assert stopped.finish_reason == "stopped"
    retry = same_reply(reusing, fresh, conversation, max_new_tokens=64, ignore_eos=True)
    assert retry.reused_tokens == retry.prompt.num_tokens - 1


def test_the_pool_keeps_at_most_its_slots_and_drops_the_least_valuable_conversation(reusing, fresh):
    conversations = [Conversation(f"{SYSTEM}（{index}番目の会話）", [], QUESTIONS[index]) for index in range(4)]
    first_replies = [answer(reusing, conversation) for conversation in conversations]
    assert len(pool_of(reusing)) == 3
    held = [len(reply.prompt.token_ids) + reply.new_tokens - 1 for reply in first_replies]
    dropped = min(range(4), key=lambda index: held[index])
    assert sorted(held).count(held[dropped]) == 1  # the test needs one clear loser
    for index, reply in enumerate(first_replies):
        follow_up = [*reply.prompt.token_ids, 5, 6]
        _, reused = pool_of(reusing).take(follow_up)
        if index == dropped:  # only the start its system prompt shares with the others is left
            assert reused < reply.prompt.num_tokens - 2
        else:
            assert reused == reply.prompt.num_tokens
    assert len(pool_of(reusing)) == 0


def test_a_new_visitor_between_turns_leaves_the_long_conversation_its_cache(reusing, fresh):
    """Every chat starts with the same system prompt: a stranger's new chat copies that shared
    start and leaves the long conversation's cache whole (it used to crop it to the prefix)."""
    turns, replies = chat(reusing, fresh, QUESTIONS[:4], SHARED_SYSTEM)
    stranger = same_reply(reusing, fresh, Conversation(SHARED_SYSTEM, [], QUESTIONS[5]))
    shared = common_prefix_length(stranger.prompt.token_ids, replies[-1].prompt.token_ids)
    assert stranger.reused_tokens == shared >= MIN_REUSED_TOKENS
    assert len(pool_of(reusing)) == 2
    turn_five = same_reply(reusing, fresh, Conversation(SHARED_SYSTEM, turns, QUESTIONS[4]))
    assert turn_five.reused_tokens >= replies[-1].prompt.num_tokens


def test_with_one_slot_a_strangers_short_chat_does_not_push_out_a_long_conversation(one_slot, fresh):
    turns, replies = chat(one_slot, fresh, QUESTIONS[:3], SHARED_SYSTEM)
    same_reply(one_slot, fresh, Conversation(SHARED_SYSTEM, [], QUESTIONS[5]))
    same_reply(one_slot, fresh, Conversation("別の人の会話です。", [], QUESTIONS[6]))
    assert len(pool_of(one_slot)) == 1
    turn_four = same_reply(one_slot, fresh, Conversation(SHARED_SYSTEM, turns, QUESTIONS[3]))
    assert turn_four.reused_tokens >= replies[-1].prompt.num_tokens


def test_clear_drops_every_cache_and_frees_it(reusing, fresh):
    reply = answer(reusing, Conversation(SYSTEM, [], QUESTIONS[0]))
    pool = pool_of(reusing)
    cache, held = pool.take(reply.prompt.token_ids)
    assert cache is not None
    released = weakref.ref(cache)
    pool.put(cache, reply.prompt.token_ids[:held])
    del cache
    assert len(pool) >= 1
    reusing.close()
    gc.collect()
    assert len(pool) == 0
    assert released() is None
    assert answer(reusing, Conversation(SYSTEM, [], QUESTIONS[0])).reused_tokens == 0


@pytest.mark.usefixtures("paced_generation")
def test_a_cache_in_use_is_not_shared_with_a_second_generation_of_the_same_prefix(reusing, fresh):
    conversation = Conversation(SYSTEM, [Turn(QUESTIONS[0], LONG_ANSWER)], QUESTIONS[1])
    answer(reusing, conversation, greedy(8))  # leaves one cache for this prefix
    params = greedy(120, ignore_eos=True)
    expected = answer(fresh, conversation, params).text
    holder = reusing.stream(conversation, params)
    holding = iter(holder)
    next(holding)  # its generation thread has taken the cache and is decoding (5 ms a step)
    second = answer(reusing, conversation, params)
    assert holder.finish_reason is None  # still running while the second reply was made
    for _ in holding:
        pass
    assert holder.reused_tokens > 0
    assert second.reused_tokens == 0
    assert holder.text == second.text == expected


def test_two_threads_generating_from_the_same_prefix_at_once_both_get_the_right_reply(reusing, fresh):
    conversation = Conversation(SYSTEM, [Turn(QUESTIONS[0], LONG_ANSWER)], QUESTIONS[1])
    params = greedy(64, ignore_eos=True)
    expected = answer(fresh, conversation, params).text
    answer(reusing, conversation, greedy(8))
    barrier = threading.Barrier(2)
    texts: list[str] = []

    def run() -> None:
        barrier.wait()
        texts.append(answer(reusing, conversation, params).text)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert texts == [expected, expected]


class FakeCache:
    """Just what the pool uses of a ``DynamicCache`` (transformers 5): its length, cropping and one
    layer of keys and values (64 bytes a token)."""

    def __init__(self, length: int) -> None:
        self.length = length
        keys, values = torch.zeros(length, 8), torch.zeros(length, 8)
        self.layers = [SimpleNamespace(keys=keys, values=values, crop=lambda tokens_to_remove: None)]

    @property
    def nbytes(self) -> int:
        return cache_nbytes(self)

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("transformers 5 crops by a count of tokens to remove, given as <= 0")
        self.length += tokens_to_remove


def ids(start: int, length: int = 40) -> list[int]:
    return list(range(start, start + length))


def test_pool_take_crops_to_the_shared_prefix_and_leaves_the_last_token_to_prefill():
    pool = PrefixCachePool(2)
    pool.put(FakeCache(40), ids(0))
    cache, reused = pool.take([*ids(0, 30), 999, 998])
    assert (reused, cache.get_seq_length()) == (30, 30)
    pool.put(FakeCache(40), ids(0))
    cache, reused = pool.take(ids(0))
    assert (reused, cache.get_seq_length()) == (39, 39)


def test_pool_evicts_the_least_recently_used_beyond_its_slots():
    pool = PrefixCachePool(2)
    pool.put(FakeCache(40), ids(0))
    pool.put(FakeCache(40), ids(100))
    cache, _ = pool.take(ids(0, 41))  # conversation 0 continues: now the most recent
    pool.put(cache, ids(0, 41))
    pool.put(FakeCache(40), ids(200))
    assert len(pool) == 2
    assert pool.take(ids(100, 41)) == (None, 0)
    assert pool.take(ids(0, 50))[1] == 40
    assert pool.take(ids(200, 50))[1] == 40


def test_pool_hands_a_cache_out_once_and_a_continued_conversation_replaces_its_earlier_entry():
    pool = PrefixCachePool(3)
    pool.put(FakeCache(20), ids(0, 20))
    pool.put(FakeCache(40), ids(0, 40))  # the same conversation, one turn on
    assert len(pool) == 1
    assert pool.take(ids(0, 60))[1] == 40
    assert pool.take(ids(0, 60)) == (None, 0)


def test_pool_keeps_the_long_conversation_and_lets_an_abandoned_one_give_way():
    now = [0.0]
    pool = PrefixCachePool(1, clock=lambda: now[0])
    pool.put(FakeCache(400), ids(0, 400))
    now[0] += 60
    pool.put(FakeCache(40), ids(1000))  # a stranger's short chat a minute later: not kept
    assert pool.take(ids(0, 401))[1] == 400
    pool.put(FakeCache(400), ids(0, 400))
    now[0] += 5 * VALUE_HALF_LIFE_SECONDS  # abandoned: 400 tokens are now worth 12.5
    pool.put(FakeCache(40), ids(1000))
    assert pool.take(ids(0, 401)) == (None, 0)
    assert pool.take(ids(1000, 41))[1] == 40


def test_pool_holds_at_most_its_byte_budget():
    pool = PrefixCachePool(10, budget_bytes=3 * FakeCache(40).nbytes)
    for start in range(0, 5000, 1000):
        pool.put(FakeCache(40), ids(start))
    assert len(pool) == 3
    assert pool.nbytes == 3 * FakeCache(40).nbytes
    pool.put(FakeCache(100), ids(9000, 100))  # worth more than any of the three, fits only alone
    assert len(pool) == 1


def test_pool_ignores_short_prefixes_and_keeps_nothing_without_slots():
    pool = PrefixCachePool(2)
    pool.put(FakeCache(MIN_REUSED_TOKENS - 1), ids(0, MIN_REUSED_TOKENS - 1))
    assert len(pool) == 0
    pool.put(FakeCache(40), ids(0))
    assert pool.take([*ids(0, MIN_REUSED_TOKENS - 1), -1, -2]) == (None, 0)
    assert len(pool) == 1
    pool.clear()
    assert len(pool) == 0
    empty = PrefixCachePool(0)
    empty.put(FakeCache(40), ids(0))
    assert len(empty) == 0


def test_pool_never_crops_a_cache_whose_layers_cannot_crop():
    """A ``StaticLayer`` of transformers 5.17 (the GPU image's) has no ``crop``: such a cache is only
    continued whole, never cut back (nor copied from)."""
    pool = PrefixCachePool(2, new_cache=lambda: FakeCache(0))
    uncroppable = FakeCache(40)
    uncroppable.layers = [SimpleNamespace(keys=torch.zeros(40, 8), values=torch.zeros(40, 8))]
    pool.put(uncroppable, ids(0))
    assert pool.take([*ids(0, 30), 999, 998]) == (None, 0)
    assert pool.take(ids(0, 41)) == (uncroppable, 40)


def test_the_cache_goes_to_the_model_under_the_name_its_transformers_takes():
    from jslm_chat.backends.inprocess.generation import cache_keyword

    class Transformers517Forward:
        def forward(self, input_ids: object = None, past_key_values: object = None, **kwargs: object) -> None: ...

    assert cache_keyword(Transformers517Forward()) == "past_key_values"
    assert cache_keyword(DynamicCacheModel()) == "cache"


class DynamicCacheModel:
    def forward(self, input_ids: object = None, cache: object = None, **kwargs: object) -> None: ...
