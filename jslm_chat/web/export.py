"""Conversation export: JSON (messages format plus settings) and Markdown, each reply with how it was made."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from jslm_chat.chat.history import content_text, is_notice

ROLE_HEADINGS = {"user": "ユーザー / User", "assistant": "アシスタント / Assistant", "system": "システム / System"}
Records = Mapping[str, Mapping[str, Any]]
"""How each reply was made (``{"seeds", "settings"}``), by its position in the history (see ``versions``)."""


def conversation_messages(history: Sequence[Mapping[str, Any]], made: Records | None = None) -> list[dict[str, Any]]:
    """The history as plain ``{role, content}`` dicts, UI notices left out; a recorded reply adds its
    ``seeds`` (its generation's, then each Continue's) and ``settings``."""
    made = made or {}
    return [
        {"role": str(message["role"]), "content": content_text(message.get("content")), **made.get(str(index), {})}
        for index, message in enumerate(history)
        if not is_notice(message)
    ]


def to_json(history: Sequence[Mapping[str, Any]], metadata: Mapping[str, Any], made: Records | None = None) -> str:
    """The conversation as pretty JSON: ``{"exported_at", "metadata", "messages"}``."""
    document = {
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metadata": dict(metadata),
        "messages": conversation_messages(history, made),
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def to_markdown(history: Sequence[Mapping[str, Any]], metadata: Mapping[str, Any], made: Records | None = None) -> str:
    """The conversation as Markdown: a title, the settings, then one section per message (a reply's seed and
    the settings it was made with where they differ from the conversation's)."""
    lines = ["# 会話ログ / Conversation", ""]
    lines += [f"- **{key}**: {value}" for key, value in metadata.items()]
    for message in conversation_messages(history, made):
        lines += ["", f"## {ROLE_HEADINGS.get(message['role'], message['role'])}", "", message["content"]]
        if "seeds" in message:
            settings = message["settings"].items()
            differing = {key: value for key, value in settings if key != "seed" and metadata.get(key) != value}
            noted = ", ".join(f"{key}={value!r}" for key, value in {"seeds": message["seeds"], **differing}.items())
            lines += ["", f"> {noted}"]
    return "\n".join(lines).rstrip() + "\n"
