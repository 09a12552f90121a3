"""The OpenAI-compatible API, driven by real clients (the ``openai`` SDK, langchain-openai, raw HTTP)
against the app launched in-process on the demo model, compared with ``/chat`` and ``/prompt``."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import httpx
import openai
import pytest
from gradio_client import Client
from helpers import generation_threads, launch_app, wait_until
from langchain_openai import ChatOpenAI

SYSTEM = "丁寧に答えてください。"
HISTORY = [
    {"role": "user", "content": "こんにちは"},
    {"role": "assistant", "content": "こんにちは！何でも聞いてください。"},
]
QUESTION = "京都について教えてください。"
MESSAGES = [{"role": "system", "content": SYSTEM}, *HISTORY, {"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def server(demo_engine):
    app, url, service = launch_app(demo_engine, concurrency=1, queue_size=1)
    yield url, service
    app.close()


@pytest.fixture(scope="module")
def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0] + "v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model(sdk) -> str:
    return sdk.models.list().data[0].id


@pytest.fixture(scope="module")
def gradio(server) -> Client:
    return Client(server[0], verbose=False)


def chat_reply(gradio: Client, **settings: object) -> str:
    """``/chat``'s final text for the same conversation."""
    return list(gradio.submit(QUESTION, HISTORY, SYSTEM, api_name="/chat", **settings))[-1]


def idle(service) -> bool:
    return wait_until(lambda: not generation_threads() and service.admission.running == 0, timeout=10)


def test_models_lists_the_one_served_model_with_its_window(sdk, server):
    models = sdk.models.list().data
    assert [entry.id for entry in models] == [Path(server[1].backend.preset.model_id).name]  # the demo's folder
    assert models[0].model_extra["max_model_len"] == server[1].backend.context_length


def test_a_greedy_reply_equals_chat_and_usage_equals_prompt(sdk, model, gradio):
    reply = sdk.chat.completions.create(model=model, messages=MESSAGES, max_tokens=40, temperature=0)
    assert reply.choices[0].message.content == chat_reply(gradio, max_new_tokens=40, temperature=0.0)
    assert reply.choices[0].message.content.strip()
    prompt = gradio.predict(QUESTION, HISTORY, SYSTEM, 40, api_name="/prompt")
    assert reply.usage.prompt_tokens == prompt["num_tokens"]
    assert 0 < reply.usage.completion_tokens <= 40
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_a_seeded_stream_equals_chat_with_role_first_finish_then_usage(sdk, model, gradio):
    chunks = list(
        sdk.chat.completions.create(
            model=model,
            messages=MESSAGES,
            max_tokens=48,
            temperature=0.8,
            seed=7,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    text = "".join(contents)
    assert text == chat_reply(gradio, max_new_tokens=48, temperature=0.8, seed=7)
    assert len([content for content in contents if content]) > 1
    assert all("\ufffd" not in content for content in contents)
    assert chunks[-2].choices[0].finish_reason in ("stop", "length") and not chunks[-2].choices[0].delta.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_extra_body_top_k_and_repetition_penalty_reach_the_sampler(sdk, model, gradio):
    extra = {"top_k": 1, "repetition_penalty": 1.5}
    sampled = sdk.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=32, temperature=1.5, seed=3, extra_body=extra
    )
    greedy = chat_reply(gradio, max_new_tokens=32, temperature=0.0, repetition_penalty=1.5)
    assert sampled.choices[0].message.content == greedy  # top_k=1 samples the greedy reply


def test_langchain_streams_the_same_reply_as_chat(server, model, gradio):
    llm = ChatOpenAI(base_url=server[0] + "v1", api_key="unused", model=model, temperature=0, max_tokens=40)
    conversation = [("system", SYSTEM), ("human", HISTORY[0]["content"]), ("ai", HISTORY[1]["content"])]
    pieces = [chunk.content for chunk in llm.stream([*conversation, ("human", QUESTION)])]
    assert len([piece for piece in pieces if piece]) > 1
    assert "".join(pieces) == chat_reply(gradio, max_new_tokens=40, temperature=0.0)


def test_stop_strings_end_the_reply_before_the_first_one(sdk, model, gradio):
    full = chat_reply(gradio, max_new_tokens=60, temperature=0.0)
    stop = full[12:15]
    expected = full[: full.index(stop)]
    whole = sdk.chat.completions.create(model=model, messages=MESSAGES, max_tokens=60, temperature=0, stop=[stop])
    assert whole.choices[0].message.content == expected
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage.completion_tokens < 60
    stream = sdk.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=60, temperature=0, stop=["存在しない", stop], stream=True
    )
    contents = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert "".join(contents) == expected


def test_text_parts_and_a_developer_message_read_as_a_string_and_a_system_message(sdk, model):
    parts = [{"type": "text", "text": QUESTION[:3]}, {"type": "text", "text": QUESTION[3:]}]
    as_parts = [{"role": "developer", "content": [{"type": "text", "text": SYSTEM}]}, *HISTORY]
    as_parts.append({"role": "user", "content": parts})
    replies = [
        sdk.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0)
        for messages in (MESSAGES, as_parts)
    ]
    assert replies[0].choices[0].message.content == replies[1].choices[0].message.content
    assert replies[0].usage == replies[1].usage


@pytest.mark.usefixtures("endless_replies", "paced_generation")
def test_closing_the_stream_stops_the_reply(sdk, model, server):
    stream = sdk.chat.completions.create(model=model, messages=MESSAGES, max_tokens=1900, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    assert generation_threads()
    stream.close()
    assert idle(server[1])


@pytest.mark.usefixtures("endless_replies", "paced_generation")
def test_a_client_that_gives_up_on_a_whole_reply_stops_it(server, model):
    body = {"model": model, "messages": MESSAGES, "max_tokens": 1900}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server[0] + "v1/chat/completions", json=body, timeout=2.0)
    assert idle(server[1])


@pytest.mark.usefixtures("endless_replies", "paced_generation")
def test_a_full_line_is_a_429_before_any_reply_and_a_waiting_stream_is_kept_alive(server, model, sdk):
    body = {"model": model, "messages": MESSAGES, "max_tokens": 1900, "stream": True}
    url = server[0] + "v1/chat/completions"
    with (
        httpx.stream("POST", url, json=body, timeout=60) as running,
        httpx.stream("POST", url, json=body, timeout=60) as waiting,
    ):
        assert running.status_code == waiting.status_code == 200
        lines = waiting.iter_lines()
        assert next(lines).startswith("data: ")  # the role
        assert next(line for line in lines if line).startswith(": waiting in line")
        with pytest.raises(openai.RateLimitError) as refused:
            sdk.chat.completions.create(model=model, messages=MESSAGES, stream=True)
        assert refused.value.status_code == 429
        assert refused.value.code == "server_busy"
        assert "混雑" in refused.value.message and "busy" in refused.value.message
    assert idle(server[1])
    assert server[1].admission.waiting == 0


@pytest.mark.usefixtures("endless_replies", "paced_generation")
def test_a_whole_reply_request_that_gives_up_in_line_frees_its_place(server, model):
    body = {"model": model, "messages": MESSAGES, "max_tokens": 1900}
    url = server[0] + "v1/chat/completions"
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=60) as running:
        assert running.status_code == 200
        outcome: list[BaseException] = []

        def give_up() -> None:  # waits in line behind the stream, then gives up
            try:
                httpx.post(url, json=body, timeout=3.0)
            except httpx.ReadTimeout as error:
                outcome.append(error)

        waiting = threading.Thread(target=give_up)
        waiting.start()
        assert wait_until(lambda: server[1].admission.waiting == 1, timeout=3)
        waiting.join()
        assert outcome  # it timed out
        assert wait_until(lambda: server[1].admission.waiting == 0, timeout=5)
        assert server[1].admission.running == 1
    assert idle(server[1])


REFUSALS = [
    ({"n": 2}, "n", "unsupported_parameter"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "unsupported_parameter"),
    ({"logprobs": True}, "logprobs", "unsupported_parameter"),
    ({"response_format": {"type": "json_object"}}, "response_format", "unsupported_parameter"),
    ({"presence_penalty": 0.5}, "presence_penalty", "unsupported_parameter"),
    ({"temperature": 3}, "temperature", "invalid_value"),
    ({"top_p": 0}, "top_p", "invalid_value"),
    ({"max_tokens": 10**6}, "max_tokens", "invalid_value"),
    ({"max_completion_tokens": 0}, "max_completion_tokens", "invalid_value"),
    ({"seed": "abc"}, "seed", "invalid_value"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
    ({"top_k": -1}, "top_k", "invalid_value"),
    ({"stream": "yes"}, "stream", "invalid_value"),
    ({"messages": []}, "messages", "invalid_value"),
    ({"messages": [{"role": "assistant", "content": "やあ"}]}, "messages[0]", "invalid_value"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "messages[1]", None),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "messages", None),
    ({"messages": [{"role": "user", "content": "   "}]}, "messages", "invalid_value"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]},
        "messages[0].content[0]",
        "unsupported_parameter",
    ),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "invalid_value"),
    (
        {"messages": [{"role": "user", "content": "日本" * 5000}], "max_tokens": 100},
        "messages",
        "context_length_exceeded",
    ),
    ({"model": "gpt-4o"}, "model", "model_not_found"),
]


@pytest.mark.parametrize(("fields", "param", "code"), REFUSALS, ids=[refusal[1] for refusal in REFUSALS])
def test_every_refusal_is_openai_shaped_bilingual_and_names_the_field(server, fields, param, code):
    body = {"messages": [{"role": "user", "content": "こんにちは"}], **fields}
    response = httpx.post(server[0] + "v1/chat/completions", json=body, timeout=30)
    error = response.json()["error"]
    assert response.status_code == (404 if code == "model_not_found" else 400)
    assert error["param"] == param
    assert code is None or error["code"] == code
    assert set(error) == {"message", "type", "param", "code"}
    japanese, _, english = error["message"].partition(" / ")
    assert japanese and english and not japanese.isascii()


def test_a_body_that_is_not_a_json_object_is_refused(server):
    for content in (b"{not json", b"[1, 2]", b""):
        response = httpx.post(server[0] + "v1/chat/completions", content=content, timeout=30)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_json"


def test_an_unsupported_request_is_refused_through_the_sdk_too(sdk, model):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=model, messages=MESSAGES, n=2)
    assert refused.value.param == "n"


def test_a_body_over_the_cap_is_an_openai_error_the_sdk_reads(sdk, model):
    huge = [{"role": "user", "content": "あ" * 3_000_000}]  # 9 MB of JSON escapes
    with pytest.raises(openai.APIStatusError) as refused:
        sdk.chat.completions.create(model=model, messages=huge, max_tokens=4)
    assert refused.value.status_code == 413 and refused.value.code == "request_too_large"
    assert "8 MB" in refused.value.message and " / " in refused.value.message


@pytest.fixture(scope="module")
def guarded(demo_engine):
    """Three apps: keys only, a login only, a login and a key."""
    launched = {
        "keys": launch_app(demo_engine, api_key=("key-one", "key-two")),
        "login": launch_app(demo_engine, auth=(("user", "secret"),)),
        "login+key": launch_app(demo_engine, auth=(("user", "secret"),), api_key=("key-one",)),
    }
    yield {name: url for name, (_, url, _) in launched.items()}
    for app, _, _ in launched.values():
        app.close()


def status(url: str, key: str | None, path: str = "v1/models") -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if path == "v1/models":
        return httpx.get(url + path, headers=headers, timeout=30).status_code
    body = {"messages": [{"role": "user", "content": "こんにちは"}], "max_tokens": 4}
    return httpx.post(url + path, json=body, headers=headers, timeout=60).status_code


@pytest.mark.parametrize("path", ["v1/models", "v1/chat/completions"])
def test_keys_open_the_api_and_a_login_alone_closes_it(guarded, path):
    assert status(guarded["keys"], None, path) == 401
    assert status(guarded["keys"], "wrong", path) == 401
    assert status(guarded["keys"], "key-two", path) == 200
    assert status(guarded["login"], None, path) == 401
    assert status(guarded["login"], "anything", path) == 401
    assert status(guarded["login+key"], "key-one", path) == 200
    assert status(guarded["login+key"], None, path) == 401


def test_a_refused_key_is_an_openai_authentication_error_and_never_logged(guarded, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(openai.AuthenticationError) as refused:
        openai.OpenAI(base_url=guarded["keys"] + "v1", api_key="key-wrong", max_retries=0).models.list()
    assert refused.value.code == "invalid_api_key"
    openai.OpenAI(base_url=guarded["keys"] + "v1", api_key="key-one", max_retries=0).models.list()
    with pytest.raises(openai.AuthenticationError) as closed:
        openai.OpenAI(base_url=guarded["login"] + "v1", api_key="key-one", max_retries=0).models.list()
    assert "--api-key" in closed.value.message
    assert "key-" not in caplog.text
    assert "refused" in caplog.text


def test_the_ui_still_asks_for_its_login_beside_a_keyed_api(guarded):
    assert httpx.get(guarded["login+key"] + "config", timeout=30).status_code == 401


def test_the_stream_is_sent_as_server_sent_events_ending_with_done(server, model):
    body = {"model": model, "messages": MESSAGES, "max_tokens": 8, "stream": True}
    with httpx.stream("POST", server[0] + "v1/chat/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert all(json.loads(event)["object"] == "chat.completion.chunk" for event in events[:-1])


def test_the_documented_streaming_example_runs_as_written(server, capsys):
    doc = (Path(__file__).resolve().parent.parent / "docs" / "openai-api.md").read_text(encoding="utf-8")
    example = doc.split("```python\n", 1)[1].split("```", 1)[0]
    assert "http://127.0.0.1:7860/v1" in example
    exec(example.replace("http://127.0.0.1:7860/v1", server[0] + "v1"), {})
    printed = capsys.readouterr().out
    assert printed.strip() and "tokens]" in printed
