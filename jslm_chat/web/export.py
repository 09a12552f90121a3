"""Conversation export: JSON (messages format plus settings) and Markdown."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from jslm_chat.chat.history import content_text, is_notice

ROLE_HEADINGS = {"user": "ユーザー / User", "assistant": "アシスタント / Assistant", "system": "システム / System"}


def conversation_messages(history: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The history as plain ``{role, content}`` dicts, UI notices left out."""
    return [
        {"role": str(message["role"]), "content": content_text(message.get("content"))}
        for message in history
        if not is_notice(message)
    ]


def to_json(history: Sequence[Mapping[str, Any]], metadata: Mapping[str, Any]) -> str:
    """The conversation as pretty JSON: ``{"exported_at", "metadata", "messages"}``."""
    document = {
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metadata": dict(metadata),
        "messages": conversation_messages(history),
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def to_markdown(history: Sequence[Mapping[str, Any]], metadata: Mapping[str, Any]) -> str:
    """The conversation as Markdown: a title, the settings, then one section per message."""
    lines = ["# 会話ログ / Conversation", ""]
    lines += [f"- **{key}**: {value}" for key, value in metadata.items()]
    for message in conversation_messages(history):
        lines += ["", f"## {ROLE_HEADINGS.get(message['role'], message['role'])}", "", message["content"]]
    return "\n".join(lines).rstrip() + "\n"
