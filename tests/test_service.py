"""The chat session layer: messages-format history, requests, validation against the engine."""

from __future__ import annotations

import pytest
from helpers import generation_threads

from jslm_chat.backends.inprocess.loading import load_inprocess_backend
from jslm_chat.chat.history import MAX_HISTORY_MESSAGES, ChatInputError, content_text, history_to_turns
from jslm_chat.chat.service import ChatService, Done, InLine, Streaming
from jslm_chat.model.params import InvalidParameterError
from jslm_chat.model.prompt import PromptInputError, PromptTooLongError, Turn

SETTINGS = {"max_new_tokens": 16, "temperature": 0.7, "top_p": 0.95, "top_k": 50, "repetition_penalty": 1.1, "seed": 3}


def test_content_from_browser_blocks_and_api_strings_is_the_same_text():
    blocks = [{"type": "text", "text": "こんにちは"}, {"type": "text", "text": "、世界"}]
    assert content_text(blocks) == "こんにちは、世界"
    assert content_text("こんにちは、世界") == "こんにちは、世界"
    assert content_text({"type": "text", "text": "単体"}) == "単体"
    assert content_text(None) == ""  # a reply stopped before its first token


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
    [
        "not a list",
        [{"role": "robot", "content": "x"}],
        [{"content": "no role"}],
        [["user", "x"]],
        [{"role": "assistant", "content": "a reply before any question"}],
        [{"role": "user", "content": {"type": "image", "url": "x.png"}}],
        [{"role": "user", "content": [[{"nested": ["junk"]}]]}],
        [{"role": "user", "content": 42}],
        [{"role": "user", "content": "x"}] * (MAX_HISTORY_MESSAGES + 1),
        [{"role": "user", "content": "長" * 200_001}, {"role": "assistant", "content": "い" * 200_001}],
    ],
)
def test_malformed_or_oversized_history_is_a_clear_bilingual_error(history):
    with pytest.raises(ChatInputError, match=r"history|メッセージの内容") as caught:
        history_to_turns(history)
    assert " / " in str(caught.value)


@pytest.fixture(scope="module")
def service(tiny_model_dir):
    return ChatService(load_inprocess_backend(str(tiny_model_dir), device="cpu"), max_new_tokens_limit=2048)


def test_limit_never_exceeds_the_context_window(service):
    assert service.max_new_tokens_limit == service.backend.context_length - 1


@pytest.mark.parametrize("message", ["", "   ", "\n\t", None])
def test_empty_messages_are_refused(service, message):
    with pytest.raises(ChatInputError, match="空"):
        service.request(message, [], SETTINGS)


def test_bad_settings_are_refused_where_they_arrive(service):
    with pytest.raises(InvalidParameterError, match="temperature"):
        service.request("こんにちは", [], {**SETTINGS, "temperature": float("nan")})
    with pytest.raises(InvalidParameterError, match="max_new_tokens"):
        service.request("こんにちは", [], {**SETTINGS, "max_new_tokens": 10_000})
    with pytest.raises(InvalidParameterError, match="seed"):
        service.request("こんにちは", [], {**SETTINGS, "seed": "lucky"})
    with pytest.raises(InvalidParameterError, match=r"system_prompt .*長すぎます.* / system_prompt is too long"):
        service.request("こんにちは", [], {**SETTINGS, "system_prompt": "長" * 200_000})
    with pytest.raises(ChatInputError, match="message is too long"):
        service.request("長" * 200_000, [], SETTINGS)
    assert service.request("こんにちは", [], {**SETTINGS, "seed": " 42 "}).params.seed == 42  # typed in the seed box
    assert service.request("こんにちは", [], {**SETTINGS, "seed": ""}).params.seed is None  # empty box: random


@pytest.mark.parametrize("field", ["message", "history", "system_prompt"])
def test_unpaired_surrogates_are_a_clear_error_not_a_crash(service, field):
    values = {"message": "こんにちは", "history": [{"role": "user", "content": "一"}], "system_prompt": "丁寧に"}
    values[field] = values[field] if field == "history" else values[field] + "\ud800"
    if field == "history":
        values["history"] = [{"role": "user", "content": "一\ud800"}]
    settings = {**SETTINGS, "system_prompt": values["system_prompt"]}
    request = service.request(values["message"], values["history"], settings)
    with pytest.raises(PromptInputError, match=r"サロゲート.* / .*unpaired surrogates"):
        service.prompt(request)


def test_a_long_system_prompt_is_named_in_the_error(service):
    request = service.request("こんにちは", [], {**SETTINGS, "system_prompt": "長い指示。" * 400})
    with pytest.raises(PromptTooLongError, match="システムプロンプト"):
        service.prompt(request)


def test_prompt_uses_history_and_system_prompt(service):
    history = [{"role": "user", "content": "こんにちは"}, {"role": "assistant", "content": "どうも"}]
    rendered = service.prompt(service.request("東京は？", history, {**SETTINGS, "system_prompt": "丁寧に答えて"}))
    assert rendered.text == (
        "<s>[INST] <<SYS>>\n丁寧に答えて\n<</SYS>>\n\nこんにちは [/INST] どうも </s><s>[INST] 東京は？ [/INST] "
    )


def test_continuing_a_reply_ends_the_prompt_with_the_partial_reply(service):
    history = [{"role": "user", "content": "長い話をして"}, {"role": "assistant", "content": "昔々、"}]
    rendered = service.prompt(service.request("", history, {**SETTINGS, "system_prompt": ""}, continue_reply=True))
    assert rendered.text == "<s>[INST] 長い話をして [/INST] 昔々、"
    with pytest.raises(ChatInputError, match="Nothing to continue"):
        service.request("", [{"role": "user", "content": "一"}], SETTINGS, continue_reply=True)


def test_a_job_streams_then_reports_done(service):
    job = service.start(service.request("こんにちは", [], {**SETTINGS, "ignore_eos": True}))
    events = list(job.events())
    assert isinstance(events[-1], Done)
    assert events[-1].finish_reason == "length"
    texts = [event.text for event in events if isinstance(event, Streaming)]
    assert job.reply.new_tokens == SETTINGS["max_new_tokens"]
    assert texts and texts[-1] == events[-1].text == job.reply.text


def test_stop_while_waiting_in_line_leaves_the_line_at_once(service):
    holder = service.admission.join()  # someone else is generating
    try:
        job = service.start(service.request("こんにちは", [], SETTINGS), session="tab-1")
        events = job.events()
        assert isinstance(next(events), InLine)
        assert service.admission.waiting == 1
        assert service.stop("tab-1")
        assert service.admission.waiting == 0  # the place is free before the job's generator runs again
        rest = list(events)
        assert [type(event) for event in rest] == [Done]
        assert rest[0].finish_reason == "stopped"
        assert not service.stop("tab-1")  # nothing left to stop
    finally:
        holder.leave()
    assert not generation_threads()


@pytest.mark.usefixtures("endless_replies", "paced_generation")
def test_stop_during_a_reply_ends_it_within_a_token_and_only_for_that_session(service):
    job = service.start(service.request("こんにちは", [], {**SETTINGS, "max_new_tokens": 400}), session="tab-1")
    events = job.events()
    assert isinstance(next(events), Streaming)
    assert not service.stop("tab-2")  # another tab has nothing running
    assert service.stop("tab-1")
    rest = list(events)
    assert len(rest) <= 2
    assert job.reply.finish_reason == "stopped"
    assert job.reply.new_tokens < 400
    assert not generation_threads()
    assert service.admission.running == 0


def test_a_new_job_for_the_same_session_stops_the_old_one(service):
    holder = service.admission.join()
    try:
        first = service.start(service.request("一", [], SETTINGS), session="tab-1")
        first_events = first.events()
        next(first_events)
        service.start(service.request("二", [], SETTINGS), session="tab-1")
        assert [type(event) for event in first_events] == [Done]
    finally:
        holder.leave()
