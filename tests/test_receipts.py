"""Receipts: a vote refers to a reply the session received, as the browser's chat shows it."""

from __future__ import annotations

import gradio as gr

from jslm_chat.chat.receipts import Receipts


def shown_by_gradio(reply: str) -> str:
    """The reply's text as Gradio's Chatbot hands it to the browser (and the browser sends it back)."""
    chatbot = gr.Chatbot()
    return chatbot.postprocess([{"role": "assistant", "content": reply}]).root[0].content[0].text


def test_a_reply_is_received_as_the_chat_shows_it():
    receipts = Receipts()
    for reply in (" 京都は古い都です。\n", "\n\n  桜\n  と紅葉\n", "\tはい"):
        receipts.add("s1", reply)
        assert shown_by_gradio(reply) != reply
        assert receipts.received("s1", shown_by_gradio(reply)) and receipts.received("s1", reply)
    assert not receipts.received("s1", "京都は新しい都です。")
    assert not receipts.received("s2", "京都は古い都です。")  # another session's reply


def test_receipts_are_bounded_per_session_and_in_sessions():
    receipts = Receipts(max_sessions=2, per_session=3)
    for index in range(4):
        receipts.add("a", f"返答 {index}")
    assert [receipts.received("a", f"返答 {index}") for index in range(4)] == [False, True, True, True]
    receipts.add("b", "b の返答")
    receipts.add("c", "c の返答")
    assert not receipts.received("a", "返答 3") and receipts.received("c", "c の返答")
