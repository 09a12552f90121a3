"""Chat history in Gradio's messages format → conversation turns, with every item checked.

Content is a string (the API) or a list of ``{"type": "text", "text": ...}`` blocks (the
browser). Messages with ``metadata`` are UI notices and system messages come from the settings:
both are skipped. Consecutive assistant messages are joined; a user message with no reply (a
reply stopped before its first token) is kept with an empty reply. Anything else that is not a
conversation (no role, an unknown role, a reply before any question, content that is not text,
more than the bounds below) is refused with a clear bilingual message.
"""

from __future__ import annotations

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
