"""Chat history in Gradio's messages format → conversation turns, with every item checked.

Content is a string (the API) or a list of ``{"type": "text", "text": ...}`` blocks (the
browser). Messages with ``metadata`` are UI notices and system messages come from the settings:
both are skipped. Consecutive assistant messages are joined; a user message with no reply (a
reply stopped before its first token) is kept with an empty reply. Anything else that is not a
conversation (no role, an unknown role, a reply before any question, content that is not text,
more than the bounds below) is refused with a clear bilingual message.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from jslm_chat.model.errors import UserError
from jslm_chat.model.prompt import Turn

ROLES = ("user", "assistant", "system")
MAX_HISTORY_MESSAGES = 1_000
MAX_HISTORY_CHARS = 400_000


class ChatInputError(UserError, ValueError):
    """The message or history cannot be used (empty, malformed, too large, unreadable text)."""


def content_text(content: object, *, nested: bool = False) -> str:
    """The plain text of a message's content: a string, a text block, or a list of strings and text blocks.

    A list inside a list is refused (``nested`` marks a block of a list): content nested deeper
    than Gradio's own format is never walked.
    """
    if content is None:  # a reply stopped before its first token
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping) and content.get("type", "text") == "text" and isinstance(content.get("text"), str):
        return str(content["text"])
    if isinstance(content, Sequence) and not isinstance(content, (str, bytes)) and not nested:
        return "".join(content_text(block, nested=True) for block in content)
    raise ChatInputError(
        "メッセージの内容はテキストにしてください / message content must be text (a string or a list of text blocks),"
        f" got {'a nested ' if nested else ''}{type(content).__name__}"
    )


def is_notice(message: Mapping[str, Any]) -> bool:
    """Whether a message is a UI notice (it has metadata) rather than part of the conversation."""
    return bool(message.get("metadata"))


def split_history(history: object, *, continue_reply: bool = False) -> tuple[list[Turn], str, str]:
    """Finished turns, plus (with ``continue_reply``) the last user message and its cut-off reply."""
    turns = history_to_turns(history)
    if not continue_reply:
        return turns, "", ""
    if not turns or not turns[-1].assistant:
        raise ChatInputError(
            "続きを生成する返答がありません（履歴の最後がアシスタントの返答ではありません）"
            " / Nothing to continue: the history does not end with an assistant reply"
        )
    last = turns[-1]
    return turns[:-1], last.user, last.assistant


def history_to_turns(history: object) -> list[Turn]:
    """Finished turns from a messages-format history (see the module docstring for the rules)."""
    if history is None:
        return []
    if not isinstance(history, Sequence) or isinstance(history, (str, bytes)):
        raise ChatInputError(
            "history は {role, content} の辞書のリストにしてください / history must be a list of {role, content} dicts"
        )
    if len(history) > MAX_HISTORY_MESSAGES:
        raise ChatInputError(
            f"history が長すぎます（{len(history):,} 件。{MAX_HISTORY_MESSAGES:,} 件まで）"
            f" / history is too long: {len(history):,} messages, at most {MAX_HISTORY_MESSAGES:,}"
        )
    turns: list[Turn] = []
    user: str | None = None
    reply, total = "", 0
    for index, message in enumerate(history):
        role = _role(message)
        if role == "system" or is_notice(message):
            continue
        text = _message_text(message, index)
        total += len(text)
        if total > MAX_HISTORY_CHARS:
            raise ChatInputError(
                f"history が長すぎます（{MAX_HISTORY_CHARS:,} 文字まで）"
                f" / history is too long: at most {MAX_HISTORY_CHARS:,} characters"
            )
        if role == "user":
            if user is not None:
                turns.append(Turn(user, reply))
            user, reply = text, ""
        elif user is None:
            raise ChatInputError(
                "history の最初の発言はユーザーにしてください / history must start with a user message, not a reply"
            )
        else:
            reply += text
    if user is not None:
        turns.append(Turn(user, reply))
    return turns


def _message_text(message: Mapping[str, Any], index: int) -> str:
    try:
        return content_text(message.get("content"))
    except ChatInputError as error:
        raise ChatInputError(f"history[{index}].content: {error}") from None


def _role(message: object) -> str:
    if not isinstance(message, Mapping) or message.get("role") not in ROLES:
        raise ChatInputError(
            "history の各要素は role が user / assistant の辞書にしてください"
            f" / each history item must be a dict with role user or assistant: {str(message)[:80]!r}"
        )
    return str(message["role"])


MAX_VERSIONS = 500
"""Kept versions (tails) of a conversation, at every depth together."""
MAX_VERSION_CHARS = 2 * MAX_HISTORY_CHARS
"""Characters of every kept version's messages together (about what the browser's storage holds)."""
MAX_VERSION_DEPTH = 32
"""Versions inside versions (a version switched away from keeps its own later versions)."""
MAX_RECORD_CHARS = 20_000
"""JSON characters of one reply's record (its seeds and settings, a system prompt included)."""
MAX_SEEDS = 64
"""Seeds in one reply's record: its generation and each Continue."""


def no_versions() -> dict[str, Any]:
    """A conversation with one version of every message and no records of how replies were made."""
    return {"branches": {}, "made": {}}


def versions_error(reason: str) -> ChatInputError:
    """The error for a conversation's unreadable versions."""
    return ChatInputError(f"会話の版（再生成・編集の履歴）が読み取れません / unreadable message versions: {reason}")


def checked_versions(raw: object, length: int) -> dict[str, Any]:
    """A conversation's versions (see ``jslm_chat.web.versions``) for a chat of ``length`` messages, checked.

    None (a conversation saved before versions existed) is no versions. Anything malformed or beyond
    :data:`MAX_VERSIONS`, :data:`MAX_VERSION_DEPTH`, :data:`MAX_VERSION_CHARS` or :data:`MAX_RECORD_CHARS`
    raises :class:`ChatInputError`.
    """
    budget = {"versions": MAX_VERSIONS, "chars": MAX_VERSION_CHARS}
    return no_versions() if raw is None else _checked_level(raw, length, 0, budget)


def _checked_level(raw: object, length: int, depth: int, budget: dict[str, int]) -> dict[str, Any]:
    if depth > MAX_VERSION_DEPTH:
        raise versions_error(f"nested deeper than {MAX_VERSION_DEPTH}")
    if not isinstance(raw, Mapping) or not isinstance(raw.get("branches", {}), Mapping):
        raise versions_error("not a {branches, made} object")
    if not isinstance(raw.get("made", {}), Mapping):
        raise versions_error("not a {branches, made} object")
    branches = {
        _position(pos, length): _checked_branch(branch, depth, budget)
        for pos, branch in raw.get("branches", {}).items()
    }
    made = {_position(pos, length - 1): _checked_record(record) for pos, record in raw.get("made", {}).items()}
    return {"branches": branches, "made": made}


def _position(pos: object, highest: int) -> str:
    if not (isinstance(pos, str) and pos.isdigit() and len(pos) <= 6 and int(pos) <= highest):
        raise versions_error(f"position {str(pos)[:20]!r} is not a message of the conversation")
    return str(int(pos))


def _checked_branch(raw: object, depth: int, budget: dict[str, int]) -> dict[str, Any]:
    tails = raw.get("tails") if isinstance(raw, Mapping) else None
    shown = raw.get("shown") if isinstance(raw, Mapping) else None
    if not isinstance(tails, list) or type(shown) is not int or not 0 <= shown < len(tails):
        raise versions_error("a branch is not {shown, tails}")
    budget["versions"] -= len(tails) - 1
    if budget["versions"] < 0:
        raise versions_error(f"more than {MAX_VERSIONS} versions")
    checked: list[dict[str, Any] | None] = []
    for index, tail in enumerate(tails):
        if (tail is None) != (index == shown):
            raise versions_error("the shown version must be the chat itself, and only it")
        checked.append(None if tail is None else _checked_tail(tail, depth, budget))
    return {"shown": shown, "tails": checked}


def _checked_tail(raw: object, depth: int, budget: dict[str, int]) -> dict[str, Any]:
    messages = raw.get("messages") if isinstance(raw, Mapping) else None
    if not isinstance(messages, list) or len(messages) > MAX_HISTORY_MESSAGES:
        raise versions_error("a version's messages are not a list")
    plain = []
    for index, message in enumerate(messages):
        try:
            text = _message_text(message, index) if _role(message) != "system" else ""
        except ChatInputError as error:
            raise versions_error(str(error)) from None
        budget["chars"] -= len(text)
        plain.append({"role": str(message["role"]), "content": text})
    if budget["chars"] < 0:
        raise versions_error(f"more than {MAX_VERSION_CHARS:,} characters in all versions")
    return {"messages": plain, **_checked_level(raw, len(plain), depth + 1, budget)}


def _plain_value(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (str, int, bool))


def _checked_record(raw: object) -> dict[str, Any]:
    seeds = raw.get("seeds") if isinstance(raw, Mapping) else None
    settings = raw.get("settings") if isinstance(raw, Mapping) else None
    if not isinstance(seeds, list) or not 0 < len(seeds) <= MAX_SEEDS or not isinstance(settings, Mapping):
        raise versions_error("a reply's record is not {seeds, settings}")
    if not all(isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**64 for seed in seeds):
        raise versions_error("a seed is not a whole number")
    if not all(isinstance(key, str) and _plain_value(value) for key, value in settings.items()):
        raise versions_error("a reply's settings are not plain values")
    record = {"seeds": list(seeds), "settings": dict(settings)}
    if len(json.dumps(record, ensure_ascii=False)) > MAX_RECORD_CHARS:
        raise versions_error(f"a reply's record is over {MAX_RECORD_CHARS:,} characters")
    return record
