"""UI text: complete translation tables and the dynamic status lines."""

from __future__ import annotations

from types import SimpleNamespace

from jslm_chat.web.text import EN, JA, TRANSLATIONS, dropped_notice, status_line, waiting_line


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
    assert "省略したターン (turns left out): 2" in line
    assert "シード (seed): 1234" in line
    assert status_line(fake_reply(finish_reason="eos"), 4096).startswith("完了")
    assert status_line(fake_reply(finish_reason="stopped"), 4096).startswith("停止しました")
    assert "max_new_tokens" in status_line(fake_reply(finish_reason="length"), 4096)
    assert "速度 (speed): –" in status_line(fake_reply(tokens_per_second=None), 4096)


def test_notices_are_bilingual():
    assert "3 ターン" in dropped_notice(3) and "3 old turn(s)" in dropped_notice(3)
    assert "前に 2 件" in waiting_line(2) and "2 ahead" in waiting_line(2)


def test_status_line_shows_reused_prompt_tokens():
    assert "再利用 (cached): 1,200 トークン" in status_line(fake_reply(reused_tokens=1200), 4096)
    assert "再利用" not in status_line(fake_reply(), 4096)
