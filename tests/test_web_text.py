"""UI text: complete translation tables and the dynamic status lines."""

from __future__ import annotations

from types import SimpleNamespace

from jslm_chat.web.text import (
    EN,
    JA,
    TRANSLATIONS,
    dropped_notice,
    header_html,
    language_of,
    status_line,
    waiting_line,
)


def test_every_language_table_has_every_key():
    assert set(JA) == set(EN)
    assert all(set(table) == set(JA) for table in TRANSLATIONS.values())
    assert all(key.startswith("jslm_") for key in JA)  # Gradio's own keys (e.g. "chatbot") would clash
    assert TRANSLATIONS["ja"]["jslm_send"] == "送信"
    assert TRANSLATIONS["en"]["jslm_send"] == "Send"


def fake_reply(**changes: object) -> SimpleNamespace:
    reply = {
        "prompt": SimpleNamespace(num_tokens=300, dropped_turns=2),
        "new_tokens": 45,
        "tokens_per_second": 23.456,
        "seed": 1234,
        "finish_reason": None,
        "reused_tokens": 0,
    }
    return SimpleNamespace(**{**reply, **changes})


def test_status_line_while_generating_and_when_done():
    line = status_line(fake_reply(), 4096)
    assert line.startswith("生成中")
    assert "345 / 4,096 トークン" in line
    assert "23.5 トークン/秒" in line
    assert "省略したターン 2" in line
    assert "シード 1234" in line
    assert status_line(fake_reply(finish_reason="eos"), 4096).startswith("完了")
    assert status_line(fake_reply(finish_reason="stopped"), 4096).startswith("停止しました")
    assert "max_new_tokens" in status_line(fake_reply(finish_reason="length"), 4096)


def test_the_status_line_leaves_out_zeros_and_unknowns():
    line = status_line(
        fake_reply(tokens_per_second=None, reused_tokens=0, prompt=SimpleNamespace(num_tokens=3, dropped_turns=0)), 4096
    )
    assert line == "生成中… · コンテキスト 48 / 4,096 トークン · シード 1234"


def test_an_english_browser_gets_an_english_status_line_header_and_waiting_line():
    line = status_line(fake_reply(finish_reason="eos", reused_tokens=1200), 4096, language="en")
    assert line == "Done · context 345 / 4,096 tokens · 1,200 cached · 23.5 tok/s · 2 turn(s) left out · seed 1234"
    assert status_line(fake_reply(finish_reason="stopped"), 4096, language="en").startswith("Reply stopped")
    assert waiting_line(2, "en") == "Waiting in line: 2 ahead of you…"
    header = header_html("demo", "cpu · float32", 2048, "<svg/>", True, "en")
    assert "Japanese StableLM Chat" in header and "Runs on: <b>cpu · float32</b>" in header
    assert not any("\u3040" <= char <= "\u30ff" for char in header)  # no kana left in the English header


def test_the_visitors_language_follows_the_browser_as_gradios_labels_do():
    assert language_of("ja-JP,ja;q=0.9,en;q=0.8") == "ja"
    assert language_of("en-US,en;q=0.9,ja;q=0.8") == "en"
    assert language_of("zh-CN") == "ja"  # the languages Japanese is shown to
    assert language_of("sv-SE") == "en"  # Gradio falls back to English for a language it has no table for
    assert language_of(None) == language_of("") == "ja"  # no header (a script): the default table


def test_notices():
    assert "3 ターン" in dropped_notice(3) and "3 old turn(s)" in dropped_notice(3)  # bilingual: a warning
    assert "前に 2 件" in waiting_line(2)


def test_status_line_shows_reused_prompt_tokens():
    assert "再利用 1,200 トークン" in status_line(fake_reply(reused_tokens=1200), 4096)
    assert "再利用" not in status_line(fake_reply(), 4096)
