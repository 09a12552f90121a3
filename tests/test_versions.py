"""Versions of a conversation (Retry, an edit) and the history checks that bound them; exports carry each
reply's record."""

from __future__ import annotations

import json
from typing import Any

import pytest

from jslm_chat.chat.history import (
    MAX_RECORD_CHARS,
    MAX_VERSION_CHARS,
    MAX_VERSION_DEPTH,
    MAX_VERSIONS,
    ChatInputError,
    checked_versions,
)
from jslm_chat.web.export import to_json, to_markdown
from jslm_chat.web.saved import SavedConversation, restore
from jslm_chat.web.versions import (
    MAX_VERSIONS_PER_MESSAGE,
    branched,
    no_versions,
    recorded,
    switched,
    switchers,
    trimmed,
)

DEFAULTS = {
    "system_prompt": "あなたは役立つアシスタントです。",
    "max_new_tokens": 64,
    "temperature": 0.7,
    "top_p": 0.95,
    "top_k": 50,
    "repetition_penalty": 1.05,
    "seed": None,
}
SETTINGS = {"system_prompt": DEFAULTS["system_prompt"], "temperature": 0.7, "seed": None}


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def reply(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def answered(history: list, versions: dict, text: str, seed: int) -> tuple[list, dict]:
    """The chat with ``text`` as the reply to its last message, recorded as made with ``seed``."""
    return [*history, reply(text)], recorded(versions, len(history), seed, SETTINGS, continued=False)


def retried(history: list, versions: dict, text: str, seed: int) -> tuple[list, dict]:
    """What Retry does: the last reply kept as a version, a new one answered."""
    return answered(history[:-1], branched(versions, history, len(history) - 1), text, seed)


def three_versions() -> tuple[list, dict]:
    history, versions = answered([user("質問")], no_versions(), "一", 1)
    history, versions = retried(history, versions, "二", 2)
    return retried(history, versions, "三", 3)


def test_retry_twice_gives_three_versions_and_the_chat_continues_from_the_one_shown():
    history, versions = three_versions()
    assert history == [user("質問"), reply("三")] and switchers(versions) == [[1, 3, 3]]
    history, versions = switched(versions, history, 1, 0)
    assert history == [user("質問"), reply("一")] and switchers(versions) == [[1, 1, 3]]
    assert versions["made"]["1"]["seeds"] == [1]  # the record follows the version shown
    history, versions = answered([*history, user("次")], versions, "続き", 4)  # continued from version 1
    history, versions = switched(versions, history, 1, 2)
    assert history == [user("質問"), reply("三")] and list(versions["made"]) == ["1"]
    assert versions["made"]["1"]["seeds"] == [3]
    history, versions = switched(versions, history, 1, 0)
    assert history == [user("質問"), reply("一"), user("次"), reply("続き")]  # version 1 kept its later turns
    assert versions["made"]["3"]["seeds"] == [4]


def test_a_later_version_survives_switching_an_earlier_message():
    history, versions = three_versions()
    history, versions = answered([*history, user("次")], versions, "a", 5)
    history, versions = retried(history, versions, "b", 6)
    assert switchers(versions) == [[1, 3, 3], [3, 2, 2]]
    history, versions = switched(versions, history, 1, 0)
    assert switchers(versions) == [[1, 1, 3]]  # version 1 has no later versions
    history, versions = switched(versions, history, 1, 2)
    assert history[-1] == reply("b") and switchers(versions) == [[1, 3, 3], [3, 2, 2]]


def test_an_edit_keeps_the_earlier_message_and_everything_after_it():
    history = [user("一"), reply("いち"), user("二"), reply("に")]
    versions = branched(no_versions(), history, 0)
    history, versions = answered([user("直した")], versions, "なおした", 7)
    assert switchers(versions) == [[0, 2, 2]]
    earlier, versions = switched(versions, history, 0, 0)
    assert earlier == [user("一"), reply("いち"), user("二"), reply("に")]


def test_undo_drops_the_versions_of_what_is_gone_and_an_empty_reply_is_no_version():
    history, versions = three_versions()
    assert trimmed(versions, 2) == versions
    assert trimmed(versions, 1) == no_versions()  # the turn with the versions is undone
    stopped = branched(versions, [*history[:1], reply("")], 1)  # a Retry of a reply stopped before its first word
    assert stopped["branches"] == versions["branches"]  # the new reply takes the empty one's place
    assert recorded(versions, 1, 9, SETTINGS, continued=True)["made"]["1"]["seeds"] == [3, 9]


def test_a_message_keeps_its_newest_versions():
    history, versions = answered([user("質問")], no_versions(), "0", 0)
    for seed in range(1, MAX_VERSIONS_PER_MESSAGE + 5):
        history, versions = retried(history, versions, str(seed), seed)
    assert switchers(versions) == [[1, MAX_VERSIONS_PER_MESSAGE, MAX_VERSIONS_PER_MESSAGE]]
    oldest, _ = switched(versions, history, 1, 0)
    assert oldest[-1] == reply("5")  # the five oldest let go


@pytest.mark.parametrize(("at", "to"), [(1, 3), (1, -1), (0, 0), (5, 0)])
def test_switching_to_a_version_that_does_not_exist_is_refused(at, to):
    history, versions = three_versions()
    with pytest.raises(ChatInputError, match="no such version"):
        switched(versions, history, at, to)


def test_saved_versions_pass_the_history_checks_and_an_older_conversation_has_none():
    history, versions = three_versions()
    stored = json.loads(json.dumps(versions))
    assert checked_versions(stored, len(history)) == versions
    assert checked_versions(None, 2) == no_versions()
    item = {"id": "a", "title": "t", "updated": 1.0, "messages": history, "settings": {}}
    [older] = restore({"version": 1, "conversations": [item]}, DEFAULTS, 2048).conversations
    assert older.versions == no_versions() and list(older.messages) == history
    restored = restore({"version": 1, "conversations": [{**item, "versions": stored}]}, DEFAULTS, 2048)
    assert restored.dropped == 0 and restored.conversations[0].versions == versions


def _tail(messages: list, **extra: Any) -> dict[str, Any]:
    return {"messages": messages, "branches": {}, "made": {}, **extra}


def _branch(*tails: Any, shown: int | None = None) -> dict[str, Any]:
    return {"shown": len(tails) if shown is None else shown, "tails": [*tails, None] if shown is None else list(tails)}


def _nested(depth: int) -> dict[str, Any]:
    level: dict[str, Any] = {"branches": {}, "made": {}}
    for _ in range(depth):
        level = {"branches": {"1": _branch(_tail([reply("x"), user("y"), reply("z")], branches=level["branches"]))}}
        level["made"] = {}
    return level


RECORD = {"seeds": [1], "settings": {"temperature": 0.7}}
MALFORMED = {
    "not an object": "versions",
    "branches not an object": {"branches": [1, 2]},
    "position not a number": {"branches": {"x": _branch(_tail([reply("a")]))}},
    "position past the chat": {"branches": {"9": _branch(_tail([reply("a")]))}},
    "shown out of range": {"branches": {"1": {"shown": 5, "tails": [None, _tail([reply("a")])]}}},
    "shown a bool": {"branches": {"1": {"shown": True, "tails": [_tail([reply("a")]), None]}}},
    "shown version stored": {"branches": {"1": _branch(_tail([reply("a")]), _tail([reply("b")]), shown=0)}},
    "two shown": {"branches": {"1": {"shown": 0, "tails": [None, None]}}},
    "a tail without messages": {"branches": {"1": _branch({"made": {}})}},
    "a message with a bad role": {"branches": {"1": _branch(_tail([{"role": "robot", "content": "x"}]))}},
    "content not text": {"branches": {"1": _branch(_tail([{"role": "assistant", "content": {"src": "x"}}]))}},
    "record of no message": {"made": {"2": RECORD}},
    "seed not a number": {"made": {"1": {"seeds": ["1"], "settings": {}}}},
    "seed a bool": {"made": {"1": {"seeds": [True], "settings": {}}}},
    "no seeds": {"made": {"1": {"seeds": [], "settings": {}}}},
    "setting not plain": {"made": {"1": {"seeds": [1], "settings": {"x": [1, 2]}}}},
    "setting not finite": {"made": {"1": {"seeds": [1], "settings": {"temperature": float("nan")}}}},
    "record too long": {"made": {"1": {"seeds": [1], "settings": {"system_prompt": "長" * MAX_RECORD_CHARS}}}},
    "too many versions": {"branches": {"1": _branch(*[_tail([reply("a")])] * (MAX_VERSIONS + 1))}},
    "too many characters": {"branches": {"1": _branch(*[_tail([reply("長" * 100_000)])] * 9)}},
    "nested too deep": _nested(MAX_VERSION_DEPTH + 2),
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_or_huge_versions_are_refused(raw):
    with pytest.raises(ChatInputError, match="unreadable message versions"):
        checked_versions(raw, 2)


def test_the_bounds_leave_room_for_real_use():
    assert MAX_VERSION_CHARS < 9 * 100_000  # the "too many characters" case is over the bound
    checked_versions({"branches": {"1": _branch(*[_tail([reply("a")])] * MAX_VERSIONS)}}, 2)
    checked_versions(_nested(MAX_VERSION_DEPTH - 1), 2)
    checked_versions({"made": {"1": {"seeds": list(range(10)), "settings": {**DEFAULTS, "x": "長" * 10_000}}}}, 2)


def test_bad_versions_of_a_saved_conversation_are_left_out_and_counted():
    history, _ = three_versions()
    item = {"id": "a", "title": "t", "updated": 1.0, "messages": history, "settings": {}, "versions": {"made": 5}}
    restored = restore({"version": 1, "conversations": [item]}, DEFAULTS, 2048)
    assert restored.dropped == 1  # told once (one log line and a warning), as a bad setting is
    assert list(restored.conversations[0].messages) == history and restored.conversations[0].versions == no_versions()


def test_exports_carry_each_replys_seeds_and_settings():
    history, versions = three_versions()
    metadata = {"model": "m", "temperature": 0.7}
    [asked, made] = json.loads(to_json(history, metadata, versions["made"]))["messages"]
    assert asked == user("質問")
    assert made == {**reply("三"), "seeds": [3], "settings": {**SETTINGS, "seed": 3}}
    markdown = to_markdown(history, {**SETTINGS, "model": "m", "temperature": 0.2}, versions["made"])
    assert "> seeds=[3], temperature=0.7" in markdown  # the seed, and the settings that differ from the export's


def test_a_long_system_prompt_is_stored_once_not_once_per_reply():
    prompt = "長い指示。" * 3_000
    history, versions = [user("質問")], no_versions()
    for seed in range(20):
        versions = recorded(versions, 1, seed, {**SETTINGS, "system_prompt": prompt}, continued=False)
        history, versions = retried([*history[:1], reply(str(seed))], versions, str(seed), seed)
    versions = recorded(versions, 1, 99, {**SETTINGS, "system_prompt": "別の指示"}, continued=False)
    conversation = SavedConversation("a", "t", 1.0, tuple(history), {**DEFAULTS, "system_prompt": prompt}, versions)
    stored = json.loads(json.dumps(conversation.as_json(), ensure_ascii=False))
    assert json.dumps(stored, ensure_ascii=False).count(prompt) == 1  # in the settings only
    [restored] = restore({"version": 1, "conversations": [stored]}, DEFAULTS, 2048).conversations
    assert restored.versions == versions  # every record has its own system prompt again
