"""The UI's event handlers on the demo model, driven directly (no browser): chat and saved conversations."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pytest
from helpers import generation_threads, wait_until

from jslm_chat.chat.service import ChatService
from jslm_chat.model.params import SHOWN_SETTINGS
from jslm_chat.web.chat_events import ChatHandlers, pending
from jslm_chat.web.saved import (
    DATE_GROUPS,
    MAX_SAVED_CONVERSATIONS,
    MAX_STORE_BYTES,
    NEW_CHAT_TITLE,
    STORE_VERSION,
    empty_store,
)
from jslm_chat.web.saved_events import PANEL_OUTPUTS, ConversationHandlers
from jslm_chat.web.versions import no_versions

REQUEST = SimpleNamespace(session_hash="session-1")  # what the handlers read from gr.Request
NAMES = [spec.name for spec in SHOWN_SETTINGS]
EMPTIED = 7  # chat, versions, status, Continue, generating, Send, Stop
V = no_versions()


@pytest.fixture(scope="module")
def service(demo_engine: Any) -> ChatService:
    return ChatService(demo_engine, max_new_tokens_limit=2048)


@pytest.fixture
def handlers(service: ChatService) -> ChatHandlers:
    return ChatHandlers(service)


@pytest.fixture
def saved(service: ChatService) -> ConversationHandlers:
    return ConversationHandlers(service, len(SHOWN_SETTINGS), EMPTIED)


def side(outputs: tuple[Any, ...]) -> SimpleNamespace:
    """The side panel in a handler's outputs, by name (its lists' choices joined, newest first)."""
    store, current, *rest = outputs[:PANEL_OUTPUTS]
    lists, (title, manage, confirm, empty, switchers) = rest[: len(DATE_GROUPS)], rest[len(DATE_GROUPS) :]
    return SimpleNamespace(
        store=store,
        current=current,
        groups={group: radio.choices for group, radio in zip(DATE_GROUPS, lists, strict=True) if radio.visible},
        choices=[choice for radio in lists for choice in radio.choices],
        selected=[radio.value for radio in lists if radio.value is not None],
        title=title,
        manage=manage.visible,
        confirm=confirm.visible,
        empty=empty.visible,
        switchers=switchers,
    )


def values(handlers: ChatHandlers, **changed: Any) -> list[Any]:
    """The controls' values: the defaults with ``changed`` settings."""
    return [changed.get(name, value) for name, value in zip(NAMES, handlers.default_settings(), strict=True)]


def drive(updates: AsyncIterator[tuple[Any, ...]], on_update: Callable[[tuple[Any, ...]], None] | None = None) -> list:
    """Every update of an async generator handler (as Gradio consumes it); ``on_update`` sees each one."""

    async def consume() -> list[tuple[Any, ...]]:
        seen = []
        async for update in updates:
            seen.append(update)
            if on_update is not None:
                on_update(update)
        return seen

    return asyncio.run(asyncio.wait_for(consume(), timeout=120))


def reply_text(update: tuple[Any, ...]) -> str:
    chat = update[0]
    return chat[-1]["content"] if isinstance(chat, list) and chat and chat[-1]["role"] == "assistant" else ""


def ask(handlers: ChatHandlers, history: list, message: str, **changed: Any) -> list[tuple[Any, ...]]:
    """Submit ``message`` and stream the reply to the end; the updates."""
    _, history, generating, _, _, todo = handlers.submit(message, history, V, False)
    assert generating is True
    return drive(handlers.respond(REQUEST, history, V, todo, *values(handlers, **changed)))


def test_submit_moves_the_message_into_the_chat_and_puts_stop_in_sends_place(handlers):
    textbox, history, generating, send, stop, todo = handlers.submit("こんにちは", [], V, False)
    assert (textbox, history, generating) == ("", [{"role": "user", "content": "こんにちは"}], True)
    assert send.visible is False and stop.visible is True and todo == pending([], V, back=True)
    for message, busy in (("   ", False), ("", False), ("二通目", True)):  # refused without an error
        refused = handlers.submit(message, history, V, busy)
        assert all(update == gr.skip() for update in refused[:-1]) and refused[-1] is None
        # Nothing to answer: every output left as it is (a generator that yields nothing empties them all).
        assert drive(handlers.respond(REQUEST, [*history], V, refused[-1], *values(handlers))) == [(gr.skip(),) * 5]


def test_respond_streams_a_finished_reply_with_a_status_line(handlers):
    updates = ask(handlers, [], "自己紹介してください。", max_new_tokens=24)
    final = updates[-1]
    assert final[0][0] == {"role": "user", "content": "自己紹介してください。"}
    assert final[0][1]["role"] == "assistant" and reply_text(final).strip()
    assert "完了" in final[2]
    assert final[1] is not None  # the textbox stays as it is (a skip)
    shown = [reply_text(update) for update in updates if isinstance(update[0], list)]
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(shown))


def test_a_bad_setting_puts_the_message_back_and_warns(handlers):
    history = [{"role": "user", "content": "質問"}]
    with pytest.warns(UserWarning, match="temperature"):
        todo = pending([], V, back=True)
        updates = drive(handlers.respond(REQUEST, history, V, todo, *values(handlers, temperature=9.0)))
    chat, textbox, status, _, _ = updates[-1]
    assert chat == [] and textbox == "質問" and status.startswith("⚠️")


@pytest.mark.usefixtures("endless_replies", "paced_generation")
@pytest.mark.parametrize("stopper", ["stop", "undo", "edit", "new_chat", "open", "delete"])
def test_stop_undo_edit_and_the_side_panel_stop_a_running_reply(handlers, saved, stopper):
    history = [{"role": "user", "content": "長いお話をしてください。"}]
    other = saved.save(empty_store(), None, [{"role": "user", "content": "別の会話"}], V, *values(handlers))
    edit = gr.EditData(None, {"index": 0, "previous_value": "", "value": "x"})
    stop: dict[str, Callable[[], object]] = {
        "stop": lambda: handlers.stop(REQUEST),
        "undo": lambda: handlers.undo(REQUEST, history, V),
        "edit": lambda: handlers.edit(REQUEST, edit, history, V),
        "new_chat": lambda: saved.new_chat(REQUEST, empty_store(), None, history, V, *values(handlers)),
        "open": lambda: saved.open(REQUEST, other[1], other[0], None, history, V, *values(handlers)),
        "delete": lambda: saved.delete(REQUEST, other[0], other[1]),
    }
    stopped_at: list[float] = []

    def stop_once_streaming(update: tuple[Any, ...]) -> None:
        if not stopped_at and len(reply_text(update)) > 5:
            stop[stopper]()
            stopped_at.append(time.monotonic())

    todo = pending([], V, back=True)
    updates = drive(
        handlers.respond(REQUEST, history, V, todo, *values(handlers, max_new_tokens=1500)), stop_once_streaming
    )
    assert stopped_at, "the reply never streamed"
    assert time.monotonic() - stopped_at[0] < 3, "the reply kept going after the stop"
    assert "停止" in updates[-1][2]
    assert wait_until(lambda: not generation_threads(), timeout=5)


def test_retry_answers_the_last_message_again(handlers):
    history = ask(handlers, [], "一つ目", max_new_tokens=8)[-1][0]
    trimmed, versions, generating, _, _, todo = handlers.retry(history, V, False)
    assert trimmed == history[:1] and generating is True
    again = drive(handlers.respond(REQUEST, trimmed, versions, todo, *values(handlers, max_new_tokens=8)))[-1][0]
    assert [message["role"] for message in again] == ["user", "assistant"]
    for empty, busy in (([], False), (history, True)):
        assert handlers.retry(empty, V, busy)[-1] is None
    refused = drive(handlers.respond(REQUEST, trimmed, versions, todo, *values(handlers, temperature=9.0)))[-1]
    assert refused[0] == history and refused[1] == gr.skip()  # a refused retry keeps the earlier reply
    assert refused[4] == V  # ... and no second version of it


@pytest.mark.usefixtures("endless_replies")
def test_continue_extends_a_reply_cut_at_max_new_tokens_in_the_same_bubble(handlers):
    final = ask(handlers, [], "続きのあるお話", max_new_tokens=8)[-1]
    assert "最大生成トークン数" in final[2]
    assert final[3].visible is True  # the Continue button appears
    history = final[0]
    generating, _, _, todo = handlers.start_continue(history, final[4], False)
    assert generating is True
    continued = drive(handlers.continue_reply(REQUEST, history, final[4], todo, *values(handlers, max_new_tokens=8)))
    continued = continued[-1]
    assert len(continued[0]) == 2  # still one user message and one reply
    assert continued[0][1]["content"].startswith(history[1]["content"])
    assert len(continued[0][1]["content"]) > len(history[1]["content"])
    assert handlers.start_continue(history[:1], V, False)[-1] is None
    seeds = continued[4]["made"]["1"]["seeds"]  # the reply's record: its generation's seed, then the Continue's
    assert seeds[0] == final[4]["made"]["1"]["seeds"][0] and len(seeds) == 2


def test_edit_replaces_the_later_turns_and_undo_still_works(handlers):
    history = ask(handlers, [], "一つ目の質問", max_new_tokens=6)[-1][0]
    history = ask(handlers, history, "二つ目の質問", max_new_tokens=6)[-1][0]
    assert len(history) == 4
    edit = gr.EditData(None, {"index": 0, "previous_value": "一つ目の質問", "value": "直した質問"})
    kept, versions, generating, _, _, todo = handlers.edit(REQUEST, edit, history, V)
    assert kept == [{"role": "user", "content": "直した質問"}] and generating is True
    refused = drive(handlers.respond(REQUEST, kept, versions, todo, *values(handlers, temperature=9.0)))[-1]
    assert refused[0] == history and refused[1] == "直した質問"  # every turn kept, the edit back in the box
    assert refused[4] == V
    answered = drive(handlers.respond(REQUEST, kept, versions, todo, *values(handlers, max_new_tokens=6)))[-1]
    answered, versions = answered[0], answered[4]
    assert [message["content"] for message in answered[:1]] == ["直した質問"] and len(answered) == 2
    earlier, _ = handlers.switch_version("0:0", answered, versions, False)[:2]
    assert earlier == history  # the edit kept the earlier version: the first question and everything after it
    undone, versions, textbox, status = handlers.undo(REQUEST, answered, versions)
    assert undone == [] and versions == V and textbox == "直した質問" and status == ""
    reply_edit = gr.EditData(None, {"index": 1, "previous_value": "", "value": "x"})
    assert handlers.edit(REQUEST, reply_edit, answered, V)[-1] is None  # a reply is not editable
    for text in ("   ", "長" * 30_000):  # refused: every turn stays
        blank = gr.EditData(None, {"index": 2, "previous_value": "二つ目の質問", "value": text})
        with pytest.warns(UserWarning):
            chat, *_, todo = handlers.edit(
                REQUEST, blank, [*history[:2], {"role": "user", "content": text}, history[3]], V
            )
        assert chat == history and todo is None


def test_undo_removes_the_last_turn_and_gives_its_message_back(handlers):
    history = [
        {"role": "user", "content": "一"},
        {"role": "assistant", "content": "いち"},
        {"role": "user", "content": [{"type": "text", "text": "二"}]},
        {"role": "assistant", "content": "に"},
    ]
    assert handlers.undo(REQUEST, history, V) == (history[:2], V, "二", "")
    assert handlers.undo(REQUEST, [], V)[0] == []


def test_reset_gives_the_presets_defaults(handlers, service):
    defaults = service.backend.preset.default_settings()
    reset = dict(zip(NAMES, handlers.default_settings(), strict=True))
    assert reset["seed"] == "" and reset["temperature"] == defaults["temperature"]


# Saved conversations: the value stored in the browser goes in and out of each handler.


def test_a_conversation_is_saved_with_its_settings_and_titled_by_its_first_message(handlers, saved):
    empty = side(saved.save(empty_store(), None, [], V, *values(handlers)))
    assert empty.current is None and empty.store["conversations"] == []  # nothing to save yet
    assert empty.empty and not empty.manage  # the friendly empty state; no rename or delete for nothing
    history = [{"role": "user", "content": "富士山の高さは？\n詳しく"}, {"role": "assistant", "content": "3776 m"}]
    panel = side(saved.save(empty.store, None, history, V, *values(handlers, temperature=0.3, seed="42")))
    current = panel.current
    assert current and panel.title == "富士山の高さは？" and panel.manage and not panel.empty
    assert panel.groups == {"today": [("富士山の高さは？", current)]} and panel.selected == [current]
    stored = json.loads(json.dumps(panel.store))  # what local storage keeps
    assert stored["version"] == STORE_VERSION
    [conversation] = stored["conversations"]
    assert conversation["messages"] == history
    assert conversation["settings"]["temperature"] == 0.3 and conversation["settings"]["seed"] == 42
    # A reload opens the conversation that was open, with its settings.
    loaded = saved.load(stored)
    assert side(loaded).current == current and side(loaded).title == "富士山の高さは？"
    assert loaded[PANEL_OUTPUTS : PANEL_OUTPUTS + 2] == (history, V)
    assert dict(zip(NAMES, loaded[PANEL_OUTPUTS + 2 :], strict=True))["temperature"] == 0.3
    assert saved.load(None)[:2] == (empty_store(), None)
    assert all(update == gr.skip() for update in saved.load(None)[PANEL_OUTPUTS:])  # nothing to restore


def test_the_side_panel_groups_conversations_by_day_in_the_browsers_time_zone(saved):
    now = time.time()
    day = 86_400
    ages = {"today": 0, "yesterday": day, "week": 3 * day, "older": 40 * day}
    items = [
        _stored(index, id=group, title=group, updated=now - age) for index, (group, age) in enumerate(ages.items())
    ]
    store = {"version": STORE_VERSION, "conversations": items, "open": "week", "utc_offset": 540}
    panel = side(saved.load(store))
    assert panel.groups == {group: [(group, group)] for group in ages}  # newest group first, each in its own
    assert panel.selected == ["week"] and panel.store["utc_offset"] == 540  # the time zone is kept
    # Just after midnight in Tokyo (15:00 UTC), a conversation from 23:59 Tokyo time is yesterday's there,
    # while the same moment is still "today" in UTC.
    midnight_tokyo = (now // day) * day + 15 * 3600
    late = [_stored(1, id="late", updated=midnight_tokyo - 60)]
    for offset, group in ((540, "yesterday"), (0, "today")):
        stored = {"version": STORE_VERSION, "conversations": late, "utc_offset": offset}
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(time, "time", lambda: midnight_tokyo + 60)
            assert list(side(saved.load(stored)).groups) == [group]
    bad = {"version": STORE_VERSION, "conversations": items, "utc_offset": "+09:00"}
    assert side(saved.load(bad)).store["utc_offset"] == 0  # a malformed time zone: UTC


def test_switching_saves_the_open_conversation_and_opens_the_other(handlers, saved):
    first = [{"role": "user", "content": "一つ目"}, {"role": "assistant", "content": "いち"}]
    second = [{"role": "user", "content": "二つ目"}]
    panel = side(saved.save(empty_store(), None, first, V, *values(handlers, top_k=7)))
    first_id = panel.current
    panel = side(saved.save(panel.store, None, second, V, *values(handlers, top_k=9)))
    second_id = panel.current
    assert [choice[1] for choice in panel.choices] == [second_id, first_id]  # newest first
    longer = [*second, {"role": "assistant", "content": "に"}]
    opened = saved.open(REQUEST, first_id, panel.store, second_id, longer, V, *values(handlers, top_k=11))
    panel = side(opened)
    chat, _, status, button, generating, send, _ = opened[PANEL_OUTPUTS : PANEL_OUTPUTS + EMPTIED]
    assert (panel.current, panel.title, chat, status, generating) == (first_id, "一つ目", first, "", False)
    assert panel.selected == [first_id] and not panel.confirm  # an open delete confirmation closes
    assert button.visible is False and send.visible is True
    assert dict(zip(NAMES, opened[PANEL_OUTPUTS + EMPTIED :], strict=True))["top_k"] == 7
    assert side(saved.load(panel.store)).current == first_id  # a reload reopens it, not the newest
    left = next(item for item in panel.store["conversations"] if item["id"] == second_id)
    assert left["messages"] == longer and left["settings"]["top_k"] == 11


def test_new_chat_rename_and_delete(handlers, saved):
    history = [{"role": "user", "content": "名前のない会話"}]
    panel = side(saved.save(empty_store(), None, history, V, *values(handlers)))
    store, current = panel.store, panel.current
    panel = side(saved.rename(store, current, "  大事な話  "))
    assert panel.title == "大事な話" and panel.choices == [("大事な話", current)]
    assert side(saved.rename(panel.store, current, "")).title == "名前のない会話"  # back to the message
    new = saved.new_chat(REQUEST, panel.store, current, history, V, *values(handlers))
    panel, chat = side(new), new[PANEL_OUTPUTS]
    assert (panel.current, panel.title, chat, panel.selected, panel.manage) == (None, "", [], [], False)
    assert len(panel.store["conversations"]) == 1  # the conversation left stays saved
    assert all(update == gr.skip() for update in saved.delete(REQUEST, panel.store, None))  # nothing open
    panel = side(saved.delete(REQUEST, panel.store, current))
    assert panel.store["conversations"] == [] and panel.choices == [] and panel.current is None
    assert panel.empty
    store, current, *_ = saved.save(panel.store, None, history, V, *values(handlers))
    store, current, *_ = saved.save(store, current, [], V, *values(handlers))  # every turn undone
    assert store["conversations"] == [] and current is None  # no empty conversation is kept


def _stored(index: int, **changed: Any) -> dict[str, Any]:
    item = {
        "id": f"id-{index}",
        "title": f"会話 {index}",
        "updated": 1_700_000_000 + index,
        "messages": [{"role": "user", "content": f"質問 {index}"}, {"role": "assistant", "content": "答え"}],
        "settings": {"temperature": 0.5},
    }
    return {**item, **changed}


@pytest.mark.parametrize(
    "store",
    [
        "not a store",
        {"version": 99, "conversations": []},
        {"version": STORE_VERSION, "conversations": "x"},
        {"version": STORE_VERSION, "conversations": [_stored(1, messages=[{"role": "robot", "content": "x"}])]},
        {"version": STORE_VERSION, "conversations": [_stored(1, messages=[{"role": "assistant", "content": "x"}])]},
        {"version": STORE_VERSION, "conversations": [_stored(1, messages="<img src=x onerror=alert(1)>")]},
        {"version": STORE_VERSION, "conversations": [_stored(1, id=42)]},
        {"version": STORE_VERSION, "conversations": [_stored(1, updated="yesterday")]},
        {"version": STORE_VERSION, "conversations": [_stored(1, title=None)]},
        {"version": STORE_VERSION, "conversations": [["id-1", "会話"]]},
    ],
)
def test_malformed_saved_data_is_dropped_with_a_bilingual_notice(saved, store):
    with pytest.warns(UserWarning, match="破棄しました。 / .* dropped"):
        loaded = saved.load(store)
    assert loaded[:2] == (empty_store(), None) and side(loaded).choices == []


def test_good_conversations_survive_beside_malformed_ones_and_bad_settings_fall_back(saved, service):
    good = _stored(2, settings={"temperature": "hot", "top_k": 5})
    store = {"version": STORE_VERSION, "conversations": [_stored(1, messages=42), good, _stored(2)]}
    with pytest.warns(UserWarning, match="3 件"):  # a bad conversation, a bad setting, a duplicate id
        loaded = saved.load(store)
    assert [item["id"] for item in loaded[0]["conversations"]] == ["id-2"]
    settings = dict(zip(NAMES, loaded[PANEL_OUTPUTS + 2 :], strict=True))
    assert settings["temperature"] == service.backend.preset.default_settings()["temperature"]
    assert settings["top_k"] == 5


def test_storage_is_bounded_to_the_newest_conversations(handlers, saved):
    many = {
        "version": STORE_VERSION,
        "conversations": [_stored(index) for index in range(MAX_SAVED_CONVERSATIONS + 10)],
    }
    kept = saved.load(many)[0]["conversations"]
    assert len(kept) == MAX_SAVED_CONVERSATIONS
    assert kept[0]["id"] == f"id-{MAX_SAVED_CONVERSATIONS + 9}" and kept[-1]["id"] == "id-10"
    big = [{"role": "user", "content": "長" * 100_000}]
    store = empty_store()
    for _ in range(12):
        store = saved.save(store, None, big, V, *values(handlers))[0]
    assert len(json.dumps(store, ensure_ascii=False).encode("utf-8")) <= MAX_STORE_BYTES + 100
    assert 5 <= len(store["conversations"]) < 12


def test_a_conversation_without_a_message_is_titled_new_chat(saved):
    store = {"version": STORE_VERSION, "conversations": [_stored(1, title="", messages=[])]}
    assert side(saved.load(store)).title == NEW_CHAT_TITLE


def test_thirty_replies_and_their_exports_write_nothing_to_disk(handlers, monkeypatch, tmp_path):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # every temp file of this process lands here
    history: list = []
    for turn in range(30):
        updates = ask(handlers, history[-6:], f"質問 {turn}", max_new_tokens=4)
        history = updates[-1][0]
        exported = json.loads(handlers.export_json(history, V, *values(handlers)))
        assert exported["messages"][-1]["role"] == "assistant"
        assert handlers.export_markdown(history, V, *values(handlers)).startswith("# 会話ログ")
    assert list(tmp_path.iterdir()) == []


def test_a_strangers_huge_versions_are_left_out_with_one_log_line(saved, caplog):
    huge = {
        "branches": {
            "1": {"shown": 1, "tails": [{"messages": [{"role": "assistant", "content": "長" * 900_000}]}, None]}
        }
    }
    store = {"version": STORE_VERSION, "conversations": [_stored(1, versions=huge)]}
    with caplog.at_level("INFO", logger="jslm_chat"), pytest.warns(UserWarning, match="1 件"):
        loaded = saved.load(store)
    assert [record.levelname for record in caplog.records if "refused" in record.message] == ["INFO"]
    assert loaded[PANEL_OUTPUTS : PANEL_OUTPUTS + 2] == (_stored(1)["messages"], V)  # stays, without them
    assert "versions" in loaded[0]["conversations"][0] and side(loaded).switchers == "[]"


def test_what_a_session_keeps_in_memory_is_bounded_as_what_it_saves(handlers, caplog):
    history = [{"role": "user", "content": "長" * 150_000}, {"role": "assistant", "content": "答え"}]
    history += [{"role": "user", "content": "次"}, {"role": "assistant", "content": "はい"}]
    versions = V
    with caplog.at_level("INFO", logger="jslm_chat"):
        for n in range(8):  # each edit of the first message keeps the earlier version, 150,000 characters
            edit = gr.EditData(None, {"index": 0, "previous_value": "長" * 150_000, "value": f"短い {n}"})
            _, versions, *_ = handlers.edit(REQUEST, edit, history, versions)
    assert len(versions["branches"]["0"]["tails"]) == 6  # five kept (750,000 characters), then let go
    assert sum("refused" in record.message for record in caplog.records) == 3
