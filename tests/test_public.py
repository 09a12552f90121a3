"""A public link's strangers: cancels at every phase, a full line, hostile input, quiet logs, a password.

The app runs in-process on the demo model with one generation slot. Prefill is slowed to at least
0.3 s per 512-token chunk (``slow_prefill``) and decoding to 5 ms per token, so that "before the
first token" and "while decoding" last long enough to hit on any machine.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from helpers import generation_threads, launch_app, wait_until

LONG_HISTORY = [
    message
    for index in range(12)
    for message in (
        {"role": "user", "content": f"質問{index}：" + "日本の文化について教えてください。" * 6},
        {"role": "assistant", "content": f"回答{index}：" + "とても奥が深いです。" * 8},
    )
]
PREFILL_CHUNK_SECONDS = 0.3


@pytest.fixture(scope="module")
def server(demo_engine):
    app, url, service = launch_app(demo_engine, concurrency=1, queue_size=1)
    yield url, service
    app.close()


@pytest.fixture
def slow_prefill(demo_engine, monkeypatch):
    """Each forward pass over more than one token (a prefill chunk) takes at least 0.3 s."""
    model = demo_engine.model
    forward = model.forward

    def slow(*args, **kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is not None and input_ids.shape[1] > 1:
            time.sleep(PREFILL_CHUNK_SECONDS)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", slow)


def idle_within(seconds: float) -> bool:
    return wait_until(lambda: not generation_threads(), timeout=seconds)


@pytest.mark.usefixtures("slow_prefill", "endless_replies", "paced_generation")
def test_a_cancel_before_the_first_token_stops_the_prefill(server):
    url, service = server
    client = Client(url, verbose=False)
    prompt = client.predict("続けてください。", LONG_HISTORY, max_new_tokens=800, api_name="/prompt")
    assert prompt["num_tokens"] > 1024  # at least three prefill chunks: 0.9 s before the first token
    job = client.submit("続けてください。", LONG_HISTORY, max_new_tokens=800, api_name="/chat")
    assert wait_until(lambda: bool(generation_threads()), timeout=10)
    assert job.outputs() == []
    job.cancel()
    assert idle_within(2 * PREFILL_CHUNK_SECONDS + 1), "the prefill went on after the cancel"
    assert wait_until(lambda: service.admission.running == 0, timeout=2)


@pytest.mark.usefixtures("endless_replies", "paced_generation")
def test_a_request_cancelled_in_line_frees_its_place_at_once(server):
    url, service = server
    running = Client(url, verbose=False).submit("一", [], max_new_tokens=1500, api_name="/chat")
    assert wait_until(lambda: len(running.outputs()) >= 1, timeout=60)
    waiting = Client(url, verbose=False).submit("二", [], max_new_tokens=1500, api_name="/chat")
    assert wait_until(lambda: service.admission.waiting == 1, timeout=10)
    waiting.cancel()
    assert wait_until(lambda: service.admission.waiting == 0, timeout=5), "the cancelled request kept its place"
    # The freed place takes the next caller instead of a "busy" refusal.
    third = Client(url, verbose=False).submit("三", [], max_new_tokens=4, api_name="/chat")
    assert wait_until(lambda: service.admission.waiting == 1, timeout=10)
    running.cancel()
    assert third.result(timeout=60)
    assert idle_within(5)  # the cancelled one never generated its 1,500 tokens for nobody


@pytest.mark.usefixtures("endless_replies", "paced_generation")
def test_a_dropped_connection_stops_the_reply(server):
    url, _ = server
    with httpx.Client(base_url=url, timeout=30) as http:
        data = ["長い話を", [], "", 1500, 0.7, 0.95, 50, 1.1, None, False]
        event = http.post("/gradio_api/call/chat", json={"data": data}).json()["event_id"]
        with http.stream("GET", f"/gradio_api/call/chat/{event}") as stream:
            for line in stream.iter_lines():
                if line.startswith("data:") and "null" not in line:
                    break  # the reply is streaming: hang up
    assert idle_within(5), "the reply went on after its client hung up"


def call(url: str, endpoint: str, data: list, **settings: object) -> tuple[str, str]:
    """One raw HTTP call (what any script can send): the last SSE event name and its data.

    ``data`` holds the first inputs; the rest are the preset's defaults, or ``settings``.
    """
    from jslm_chat.model.params import SHOWN_SETTINGS
    from jslm_chat.model.presets import PRESETS

    defaults = {**PRESETS["instruct-beta-7b"].default_settings(), **settings}
    rest = [defaults[spec.name] for spec in SHOWN_SETTINGS] + [False]
    data = [*data, *rest[len(data) - 2 :]]
    with httpx.Client(base_url=url, timeout=60) as http:
        body = json.dumps({"data": data})  # a lone surrogate travels as the JSON escape \\ud800
        event = http.post(f"/gradio_api/call/{endpoint}", content=body, headers={"content-type": "application/json"})
        lines = http.get(f"/gradio_api/call/{endpoint}/{event.json()['event_id']}").text.splitlines()
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    payloads = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    return names[-1], payloads[-1]


@pytest.mark.parametrize("endpoint", ["prompt", "chat"])
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (["こんにちは\ud800", []], "メッセージに使えない文字"),
        (["こんにちは", [{"role": "user", "content": "\udfff"}]], "会話履歴に使えない文字"),
        (["こんにちは", [], "\ud800"], "システムプロンプトに使えない文字"),
        (["こんにちは", [{"role": "assistant", "content": "lone reply"}]], "must start with a user message"),
        (["こんにちは", [{"role": "user", "content": {"nested": [{"junk": 1}]}}]], "message content must be text"),
        (["こんにちは", [], "長" * 200_000], "system_prompt is too long"),
        (["長" * 200_000, []], "message is too long"),
        (["こんにちは", [{"role": "user", "content": "x"}] * 1001], "history is too long"),
    ],
)
def test_hostile_input_gets_a_clear_bilingual_answer(server, endpoint, data, expected):
    url, _ = server
    name, payload = call(url, endpoint, data)
    assert name == "error", payload
    message = json.loads(payload)["error"]
    assert expected in message and " / " in message


@pytest.mark.parametrize("endpoint", ["prompt", "chat"])
def test_empty_contents_of_a_reply_stopped_before_its_first_token_are_accepted(server, endpoint):
    url, _ = server
    stopped = [{"role": "user", "content": None}, {"role": "assistant", "content": None}]
    name, payload = call(url, endpoint, ["こんにちは", stopped])
    assert name == "complete", payload


def test_user_errors_log_one_line_each_and_no_traceback(server, capfd):
    url, _ = server
    capfd.readouterr()
    bad_calls = ((["   ", []], {}), (["こんにちは", []], {"max_new_tokens": 0}), (["こ", [{"role": "x"}]], {}))
    for data, settings in bad_calls:
        assert call(url, "chat", data, **settings)[0] == "error"
    captured = capfd.readouterr()
    logged = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    assert "Traceback" not in "\n".join(logged)
    assert len(logged) <= 3 * 2, logged


def test_prompt_floods_do_not_starve_a_chat(server):
    url, _ = server
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": "長い履歴です。" * 50} for i in range(1000)]
    client = Client(url, verbose=False)
    started = time.monotonic()
    assert client.predict("こんにちは", [], max_new_tokens=16, seed=1, api_name="/chat")
    alone = time.monotonic() - started
    flood = [
        threading.Thread(target=lambda: Client(url, verbose=False).predict("最後", history, api_name="/prompt"))
        for _ in range(4)
    ]
    for thread in flood:
        thread.start()
    started = time.monotonic()
    assert client.predict("こんにちは", [], max_new_tokens=16, seed=1, api_name="/chat")
    flooded = time.monotonic() - started
    for thread in flood:
        thread.join(60)
    assert flooded < alone * 10 + 2, (alone, flooded)


def test_a_password_keeps_strangers_out_of_the_ui_and_the_api(demo_engine, capfd):
    app, url, _ = launch_app(demo_engine, auth=(("friend", "s3cret-pass"),))
    try:
        with pytest.raises((ValueError, AppError, httpx.HTTPError)):
            Client(url, verbose=False).predict("こんにちは", [], api_name="/prompt")
        with httpx.Client(base_url=url) as http:
            assert http.post("/gradio_api/call/prompt", json={"data": ["こんにちは", []]}).status_code in (401, 403)
        friend = Client(url, auth=("friend", "s3cret-pass"), verbose=False)
        assert friend.predict("こんにちは", [], api_name="/prompt")["num_tokens"] > 0
    finally:
        app.close()
    captured = capfd.readouterr()
    assert "s3cret-pass" not in captured.out + captured.err
