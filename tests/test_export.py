"""Conversation export to JSON and Markdown."""

from __future__ import annotations

import json

from jslm_chat.web.export import to_json, to_markdown

HISTORY = [
    {"role": "user", "content": [{"type": "text", "text": "こんにちは"}]},
    {"role": "assistant", "content": "こんにちは！**何でも**どうぞ。"},
    {"role": "assistant", "content": "notice", "metadata": {"title": "省略"}},
]
META = {"model": "stabilityai/japanese-stablelm-instruct-beta-7b", "system_prompt": "あなたは役立つアシスタントです。"}


def test_json_export_round_trips_messages_and_metadata():
    document = json.loads(to_json(HISTORY, META))
    assert document["messages"] == [
        {"role": "user", "content": "こんにちは"},
        {"role": "assistant", "content": "こんにちは！**何でも**どうぞ。"},
    ]
    assert document["metadata"] == META
    assert document["exported_at"].endswith("+00:00")
    assert "こんにちは" in to_json(HISTORY, META)  # not \\u-escaped


def test_markdown_export_has_a_section_per_message():
    text = to_markdown(HISTORY, META)
    assert text.startswith("# 会話ログ / Conversation\n")
    assert "- **model**: stabilityai/japanese-stablelm-instruct-beta-7b" in text
    assert text.count("## ユーザー / User") == 1
    assert text.count("## アシスタント / Assistant") == 1
    assert "notice" not in text
