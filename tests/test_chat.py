"""The chat session layer: messages-format history, requests, validation against the engine."""

from __future__ import annotations

import pytest
from conftest import generation_threads

from jslm_chat.chat import ChatInputError, ChatRequest, ChatService, InLine, content_text, history_to_turns
from jslm_chat.loading import load_engine
from jslm_chat.params import GenerationParams, InvalidParameterError
from jslm_chat.prompt import Turn

PARAMS = GenerationParams(16, 0.7, 0.95, 50, 1.1, 3)


def test_content_from_browser_blocks_and_api_strings_is_the_same_text():
    blocks = [{"type": "text", "text": "こんにちは"}, {"type": "text", "text": "、世界"}]
    assert content_text(blocks) == "こんにちは、世界"
    assert content_text("こんにちは、世界") == "こんにちは、世界"
    assert content_text({"type": "text", "text": "単体"}) == "単体"
    assert content_text(None) == ""


def test_history_pairs_user_and_assistant_messages():
    history = [
        {"role": "system", "content": "ignored"},
        {"role": "user", "content": [{"type": "text", "text": "一"}]},
        {"role": "assistant", "content": "いち"},
        {"role": "assistant", "content": "（続き）"},
        {"role": "assistant", "content": "notice", "metadata": {"title": "省略"}},
        {"role": "user", "content": "二"},
    ]
    assert history_to_turns(history) == [Turn("一", "いち（続き）"), Turn("二", "")]
    assert history_to_turns(None) == []
    assert history_to_turns([]) == []


@pytest.mark.parametrize(
    "history",
    ["not a list", [{"role": "robot", "content": "x"}], [{"content": "no role"}], [["user", "x"]]],
)
def test_malformed_history_is_a_clear_error(history):
    with pytest.raises(ChatInputError, match="history"):
        history_to_turns(history)


@pytest.fixture(scope="module")
def service(tiny_model_dir):
    return ChatService(load_engine(str(tiny_model_dir), device="cpu"), max_new_tokens_limit=2048)


def test_limit_never_exceeds_the_context_window(service):
    assert service.max_new_tokens_limit == service.engine.context_length - 1


@pytest.mark.parametrize("message", ["", "   ", "\n\t"])
def test_empty_messages_are_refused(service, message):
    with pytest.raises(ChatInputError, match="空"):
        service.prompt(ChatRequest(message, [], "", PARAMS))


def test_bad_parameters_are_refused_before_generation(service):
    bad = GenerationParams(16, float("nan"), 0.95, 50, 1.1)
    with pytest.raises(InvalidParameterError, match="temperature"):
        service.reply(ChatRequest("こんにちは", [], "", bad))
    too_many = GenerationParams(10_000, 0.7, 0.95, 50, 1.1)
    with pytest.raises(InvalidParameterError, match="max_new_tokens"):
        service.prompt(ChatRequest("こんにちは", [], "", too_many))


def test_prompt_uses_history_and_system_prompt(service):
    history = [{"role": "user", "content": "こんにちは"}, {"role": "assistant", "content": "どうも"}]
    rendered = service.prompt(ChatRequest("東京は？", history, "丁寧に答えて", PARAMS))
    assert rendered.text == (
        "<s>[INST] <<SYS>>\n丁寧に答えて\n<</SYS>>\n\nこんにちは [/INST] どうも </s><s>[INST] 東京は？ [/INST] "
    )


def test_reply_streams_for_a_request(service):
    reply = service.reply(ChatRequest("こんにちは", [], "", PARAMS))
    texts = list(reply)
    assert reply.new_tokens > 0
    assert texts == [] or texts[-1] == reply.text


def test_stop_while_waiting_in_line_leaves_without_generating(service):
    holder = service.admission.join()  # someone else is generating
    try:
        run = service.run(service.reply(ChatRequest("こんにちは", [], "", PARAMS)), session="tab-1")
        assert isinstance(next(run), InLine)
        assert service.admission.waiting == 1
        assert service.stop("tab-1")
        assert list(run) == []
        assert service.admission.waiting == 0
        assert not service.stop("tab-1")  # nothing left to stop
    finally:
        holder.leave()
    assert not generation_threads()


@pytest.mark.usefixtures("endless_replies", "paced_generation")
def test_stop_during_a_reply_ends_it_within_a_token_and_only_for_that_session(service):
    reply = service.reply(ChatRequest("こんにちは", [], "", GenerationParams(400, 0.7, 0.95, 50, 1.1, 1)))
    run = service.run(reply, session="tab-1")
    assert isinstance(next(run), str)
    assert not service.stop("tab-2")  # another tab has nothing running
    assert service.stop("tab-1")
    rest = list(run)
    assert len(rest) <= 1
    assert reply.finish_reason == "stopped"
    assert reply.new_tokens < 400
    assert not generation_threads()
    assert service.admission.running == 0
