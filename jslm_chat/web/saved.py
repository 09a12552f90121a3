"""Conversations saved in the browser (local storage through ``gr.BrowserState``), never on the server.

The stored value is ``{"version": 1, "conversations": [...], "open": id, "utc_offset": minutes}``, newest
first (``open``: the conversation the browser had open, reopened on reload; ``utc_offset``: the browser's
time zone, which the page writes in on load, for the side panel's date groups); each conversation is
``{"id", "title", "updated", "messages", "settings", "versions"}`` with plain ``{role, content}`` messages,
the settings of :data:`~jslm_chat.model.params.SHOWN_SETTINGS` by name, and the messages' other versions and
the replies' records (:mod:`jslm_chat.web.versions`; a conversation saved without them has none). What
comes back from a browser is checked like API history (:func:`~jslm_chat.chat.history.history_to_turns`): a malformed
conversation is dropped, a malformed setting falls back to its default, and the caller tells the
user how many were dropped. Storage stays bounded: the :data:`MAX_SAVED_CONVERSATIONS` most
recently updated conversations, at most :data:`MAX_STORE_BYTES` of JSON in all.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from jslm_chat.chat.history import ChatInputError, checked_versions, history_to_turns
from jslm_chat.chat.service import log_user_error
from jslm_chat.model.params import SHOWN_SETTINGS, InvalidParameterError
from jslm_chat.web.versions import Versions, no_versions, with_records

STORE_VERSION = 1
MAX_SAVED_CONVERSATIONS = 50
"""Only the 50 most recently updated conversations are kept (older ones are dropped when saving)."""
MAX_STORE_BYTES = 2_500_000
"""UTF-8 bytes of JSON for all saved conversations: about 3.4 M characters once Gradio encrypts and
base64-encodes it, inside the browsers' 5 M-character local storage quota per site."""
MAX_TITLE_CHARS = 60
MAX_ID_CHARS = 64
NEW_CHAT_TITLE = "新しい会話 / New chat"
DATE_GROUPS = ("today", "yesterday", "week", "older")
"""The side panel's groups, newest first: today, yesterday, the 7 days before, older (in the browser's time zone)."""
MAX_UTC_OFFSET_MINUTES = 14 * 60
DAY_SECONDS = 86_400

Message = dict[str, str]


@dataclass(frozen=True)
class SavedConversation:
    """One saved conversation: display messages (plain text) and the settings it was held with."""

    id: str
    title: str
    updated: float
    messages: tuple[Message, ...] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)
    versions: Versions = field(default_factory=no_versions)

    def as_json(self) -> dict[str, Any]:
        """The JSON-ready form stored in the browser (a reply's record leaves out the conversation's system
        prompt when it was made with that one: a long prompt is stored once, not once per reply)."""
        prompt = self.settings.get("system_prompt")

        def stored(record: dict[str, Any]) -> dict[str, Any]:
            settings = dict(record["settings"])
            if settings.get("system_prompt") == prompt:
                del settings["system_prompt"]
            return {**record, "settings": settings}

        return {
            "id": self.id,
            "title": self.title,
            "updated": self.updated,
            "messages": [dict(message) for message in self.messages],
            "settings": dict(self.settings),
            "versions": with_records(self.versions, stored),
        }


@dataclass(frozen=True)
class Restored:
    """Conversations read back from a browser, and how many malformed items were left out."""

    conversations: list[SavedConversation]
    dropped: int


def empty_store() -> dict[str, Any]:
    """The value of a browser that has saved nothing yet."""
    return {"version": STORE_VERSION, "conversations": [], "open": None, "utc_offset": 0}


def new_id() -> str:
    """A fresh conversation id."""
    return uuid.uuid4().hex


def title_for(messages: Sequence[Mapping[str, Any]]) -> str:
    """A title from the first user message: its first line, cut to :data:`MAX_TITLE_CHARS`."""
    for message in messages:
        if message.get("role") == "user" and message.get("content", "").strip():
            return short_title(message["content"])
    return NEW_CHAT_TITLE


def short_title(text: str) -> str:
    """``text``'s first non-empty line, whitespace collapsed, at most :data:`MAX_TITLE_CHARS` characters."""
    line = next((line for line in text.splitlines() if line.strip()), "")
    line = " ".join(line.split())
    return line if len(line) <= MAX_TITLE_CHARS else line[: MAX_TITLE_CHARS - 1] + "…"


def display_messages(history: object) -> tuple[Message, ...]:
    """Checked plain messages for the chat; raises :class:`ChatInputError` like API history.

    Notices are left out, consecutive replies joined; an empty reply is not shown.
    """
    messages: list[Message] = []
    for turn in history_to_turns(history):
        messages.append({"role": "user", "content": turn.user})
        if turn.assistant:
            messages.append({"role": "assistant", "content": turn.assistant})
    return tuple(messages)


def checked_settings(raw: object, defaults: Mapping[str, Any], limit: int) -> tuple[dict[str, Any], int]:
    """Every shown setting checked (a missing one takes its default); and how many were malformed."""
    values = raw if isinstance(raw, Mapping) else {}
    dropped = 0 if raw is None or isinstance(raw, Mapping) else 1
    settings: dict[str, Any] = {}
    for spec in SHOWN_SETTINGS:
        settings[spec.name] = defaults[spec.name]
        if spec.name in values:
            try:
                settings[spec.name] = spec.check(values[spec.name], high=limit)
            except InvalidParameterError:
                dropped += 1
    return settings, dropped


def restore(raw: object, defaults: Mapping[str, Any], limit: int) -> Restored:
    """The conversations in a browser's stored value, checked, newest first, within the bounds."""
    if raw is None:
        return Restored([], 0)
    items = raw.get("conversations") if isinstance(raw, Mapping) and raw.get("version") == STORE_VERSION else None
    if not isinstance(items, list):
        return Restored([], 1)
    conversations: list[SavedConversation] = []
    seen: set[str] = set()
    dropped = 0
    for item in items:
        conversation, bad_settings = _checked(item, defaults, limit)
        if conversation is None or conversation.id in seen:
            dropped += 1
            continue
        seen.add(conversation.id)
        dropped += bad_settings
        conversations.append(conversation)
    conversations.sort(key=lambda conversation: conversation.updated, reverse=True)
    return Restored(bounded(conversations), dropped)


def _checked(item: object, defaults: Mapping[str, Any], limit: int) -> tuple[SavedConversation | None, int]:
    if not isinstance(item, Mapping):
        return None, 0
    ident, title, updated = item.get("id"), item.get("title"), item.get("updated")
    if not (isinstance(ident, str) and 0 < len(ident) <= MAX_ID_CHARS and isinstance(title, str)):
        return None, 0
    if isinstance(updated, bool) or not isinstance(updated, (int, float)) or not math.isfinite(updated):
        return None, 0
    try:
        messages = display_messages(item.get("messages"))
    except ChatInputError:
        return None, 0
    settings, bad_settings = checked_settings(item.get("settings"), defaults, limit)
    try:
        versions = checked_versions(item.get("versions"), len(messages))
    except ChatInputError:  # the conversation as shown stays; its other versions are left out
        versions, bad_settings = no_versions(), bad_settings + 1
    prompt = {"system_prompt": settings["system_prompt"]}  # stored once (see as_json)
    versions = with_records(versions, lambda record: {**record, "settings": {**prompt, **record["settings"]}})
    title = short_title(title) or title_for(messages)
    return SavedConversation(ident, title, float(updated), messages, settings, versions), bad_settings


def bounded(conversations: Sequence[SavedConversation]) -> list[SavedConversation]:
    """The newest conversations that fit :data:`MAX_SAVED_CONVERSATIONS` and :data:`MAX_STORE_BYTES`."""
    kept: list[SavedConversation] = []
    size = 0
    for conversation in conversations[:MAX_SAVED_CONVERSATIONS]:
        size += len(json.dumps(conversation.as_json(), ensure_ascii=False).encode("utf-8"))
        if size > MAX_STORE_BYTES:
            break
        kept.append(conversation)
    return kept


def store_value(
    conversations: Sequence[SavedConversation], current: str | None = None, offset: int = 0
) -> dict[str, Any]:
    """The value to store in the browser (bounded), with the open conversation's id (None: a new chat) and the
    browser's UTC offset in minutes."""
    kept = [item.as_json() for item in bounded(conversations)]
    return {"version": STORE_VERSION, "conversations": kept, "open": current, "utc_offset": offset}


def utc_offset(raw: object) -> int:
    """The browser's UTC offset in minutes from its stored value (0 when missing or malformed)."""
    offset = raw.get("utc_offset") if isinstance(raw, Mapping) else None
    if isinstance(offset, bool) or not isinstance(offset, int) or abs(offset) > MAX_UTC_OFFSET_MINUTES:
        return 0
    return offset


def date_group(updated: float, now: float, offset: int) -> str:
    """The :data:`DATE_GROUPS` name for a conversation last updated at ``updated`` (seconds), seen at ``now``
    by a browser ``offset`` minutes east of UTC."""
    days = int((now + offset * 60) // DAY_SECONDS - (updated + offset * 60) // DAY_SECONDS)
    if days <= 0:
        return "today"
    if days == 1:
        return "yesterday"
    return "week" if days <= 7 else "older"


OLDER_STORE = object()  # a stored value written before the open conversation was stored


def open_id(raw: object, conversations: Sequence[SavedConversation]) -> str | None:
    """The conversation the browser had open (a stored value without one: the newest; a new chat: None)."""
    wanted = raw.get("open", OLDER_STORE) if isinstance(raw, Mapping) else OLDER_STORE
    if wanted is OLDER_STORE:
        return conversations[0].id if conversations else None
    return wanted if any(item.id == wanted for item in conversations) else None


def with_saved(
    conversations: Sequence[SavedConversation],
    ident: str | None,
    history: object,
    settings: Mapping[str, Any],
    versions: object = None,
) -> tuple[list[SavedConversation], str | None]:
    """The list with the conversation ``ident`` (a new one if None) holding ``history``, ``settings`` and
    ``versions``.

    A conversation with no messages is not kept (the id becomes None). An unchanged conversation
    keeps its place; a changed one moves to the top. Raises :class:`ChatInputError` for a malformed history;
    versions beyond the bounds are left out (one log line), the conversation as shown is saved.
    """
    messages = display_messages(history)
    existing = next((item for item in conversations if item.id == ident), None)
    if not messages:  # nothing worth keeping (a refused first message, every turn undone)
        return without(conversations, ident), None
    try:
        kept = checked_versions(versions, len(messages))
    except ChatInputError as error:
        log_user_error(error)
        kept = no_versions()
    changed = {"messages": messages, "settings": dict(settings), "versions": kept}
    if existing is not None and all(getattr(existing, name) == value for name, value in changed.items()):
        return list(conversations), ident
    if existing is None:
        saved = SavedConversation(ident or new_id(), title_for(messages), time.time(), **changed)
    else:
        saved = replace(existing, updated=time.time(), **changed)
    return [saved, *(item for item in conversations if item.id != saved.id)], saved.id


def renamed(conversations: Sequence[SavedConversation], ident: str, title: str) -> list[SavedConversation]:
    """The list with conversation ``ident`` renamed (an empty title goes back to the first message)."""
    return [
        replace(item, title=short_title(title) or title_for(item.messages)) if item.id == ident else item
        for item in conversations
    ]


def without(conversations: Sequence[SavedConversation], ident: str | None) -> list[SavedConversation]:
    """The list without conversation ``ident``."""
    return [item for item in conversations if item.id != ident]
