"""The HTTP API, driven with gradio_client against the app launched in-process on the demo model."""

from __future__ import annotations

import itertools
import time

import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError
from helpers import generation_threads, launch_app, wait_until

SYSTEM = "あなたは役立つアシスタントです。"
TWO_TURNS = [
    {"role": "user", "content": "こんにちは"},
    {"role": "assistant", "content": "こんにちは！何でも聞いてください。"},
    {"role": "user", "content": [{"type": "text", "text": "日本の首都は？"}]},
    {"role": "assistant", "content": "東京です。"},
]


@pytest.fixture(scope="module")
def server(demo_engine):
    app, url, _ = launch_app(demo_engine, concurrency=1, queue_size=8)
    yield url
    app.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server, verbose=False)


def stream(client: Client, message: str, history: list, **params: object) -> list[str]:
    job = client.submit(message, history, api_name="/chat", **params)
    return list(job)


def test_api_lists_exactly_the_two_named_endpoints(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/chat", "/prompt"}
    names = [parameter["parameter_name"] for parameter in endpoints["/chat"]["parameters"]]
    assert names == [
        "message",
        "history",
        "system_prompt",
        "max_new_tokens",
        "temperature",
        "top_p",
        "top_k",
        "repetition_penalty",
        "seed",
        "continue_reply",
    ]


@pytest.mark.usefixtures("paced_generation")
def test_chat_streams_a_multi_turn_reply_in_several_growing_chunks(client):
    chunks = stream(client, "京都について教えてください。", TWO_TURNS, max_new_tokens=48, seed=7, temperature=0.7)
    assert len(chunks) > 1
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(chunks))
    assert chunks[-1].strip()
    assert "\ufffd" not in chunks[-1]


def test_same_seed_gives_the_same_reply_over_the_api(client):
    first = stream(client, "おすすめの料理は？", [], max_new_tokens=24, seed=11)[-1]
    assert stream(client, "おすすめの料理は？", [], max_new_tokens=24, seed=11)[-1] == first


def test_prompt_returns_the_llama2_template_for_a_two_turn_history(client, demo_engine):
    result = client.predict("京都は？", TWO_TURNS, SYSTEM, 64, api_name="/prompt")
    expected = (
        f"<s>[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\nこんにちは [/INST] こんにちは！何でも聞いてください。 </s>"
        "<s>[INST] 日本の首都は？ [/INST] 東京です。 </s>"
        "<s>[INST] 京都は？ [/INST] "
    )
    assert result["prompt"] == expected
    tokenizer = demo_engine.tokenizer  # the in-process backend's own

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    assert result["token_ids"] == [
        1,
        *encode(f"[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\nこんにちは [/INST] こんにちは！何でも聞いてください。 "),
        2,
        1,
        *encode("[INST] 日本の首都は？ [/INST] 東京です。 "),
        2,
        1,
        *encode("[INST] 京都は？ [/INST] "),
    ]
    assert result["num_tokens"] == len(result["token_ids"])
    assert result["dropped_turns"] == 0


def test_prompt_reports_dropped_turns_when_the_history_is_too_long(client):
    long_history = []
    for index in range(40):
        long_history += [
            {"role": "user", "content": f"質問{index}：" + "日本の文化について。" * 6},
            {"role": "assistant", "content": f"回答{index}：" + "とても奥が深いです。" * 6},
        ]
    result = client.predict("最後の質問", long_history, SYSTEM, 512, api_name="/prompt")
    assert result["dropped_turns"] > 0
    assert result["num_tokens"] <= 2048 - 512
    assert "質問0：" not in result["prompt"]
    assert result["prompt"].endswith("[INST] 最後の質問 [/INST] ")


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        (("こんにちは", []), {"temperature": -1.0}, "temperature"),
        (("こんにちは", []), {"top_p": 1.5}, "top_p"),
        (("こんにちは", []), {"max_new_tokens": 0}, "max_new_tokens"),
        (("こんにちは", []), {"repetition_penalty": 9.0}, "repetition_penalty"),
        (("   ", []), {}, "空"),
        (("こんにちは", [{"role": "robot", "content": "x"}]), {}, "history"),
        (("長い。" * 3000, []), {}, "長すぎます"),
    ],
)
def test_bad_inputs_get_clear_errors_and_the_server_keeps_serving(client, args, kwargs, expected):
    for endpoint in ("/chat", "/prompt"):
        with pytest.raises(AppError, match=expected):
            client.predict(*args, api_name=endpoint, **kwargs)
    assert stream(client, "こんにちは", [], max_new_tokens=4)


@pytest.mark.usefixtures("endless_replies")
def test_cancelling_a_chat_job_ends_the_server_side_generation(client, demo_engine):
    max_new_tokens = 1500
    job = client.submit("長い話をしてください。", [], api_name="/chat", max_new_tokens=max_new_tokens, seed=1)
    assert wait_until(lambda: len(job.outputs()) >= 3, timeout=60)
    assert generation_threads()
    job.cancel()
    cancelled_at = time.monotonic()
    assert wait_until(lambda: not generation_threads(), timeout=5), "the generation thread outlived its request"
    stopped_after = time.monotonic() - cancelled_at

    started = time.monotonic()
    follow_up = stream(client, "こんにちは", [], max_new_tokens=8, seed=2)
    follow_up_seconds = time.monotonic() - started
    assert follow_up
    # The old reply had well over 1000 tokens to go; the new one must not have waited for them.
    speed = _tokens_per_second(client)
    remaining_seconds = (max_new_tokens - 100) / speed
    assert stopped_after + follow_up_seconds < remaining_seconds / 3, (stopped_after, follow_up_seconds, speed)


def _tokens_per_second(client: Client) -> float:
    started = time.monotonic()
    chunks = stream(client, "速さを測ります。", [], max_new_tokens=64, seed=3)
    assert chunks
    return 64 / (time.monotonic() - started)


@pytest.mark.usefixtures("endless_replies")
def test_stopping_one_session_never_touches_another(server):
    first, second = Client(server, verbose=False), Client(server, verbose=False)
    long_job = first.submit("長い話をしてください。", [], api_name="/chat", max_new_tokens=1500, seed=4)
    assert wait_until(lambda: len(long_job.outputs()) >= 2, timeout=60)
    other = second.submit("こんにちは", [], api_name="/chat", max_new_tokens=40, seed=5)  # waits: concurrency 1
    long_job.cancel()
    chunks = list(other)
    assert len(chunks) > 1
    assert other.status().success
    assert wait_until(lambda: not generation_threads(), timeout=5)


@pytest.mark.usefixtures("endless_replies")
def test_a_full_line_answers_with_a_clear_busy_message(demo_engine):
    app, url, service = launch_app(demo_engine, concurrency=1, queue_size=1)
    try:
        clients = [Client(url, verbose=False) for _ in range(3)]
        running = clients[0].submit("一", [], api_name="/chat", max_new_tokens=1500)
        assert wait_until(lambda: len(running.outputs()) >= 1, timeout=60)
        waiting = clients[1].submit("二", [], api_name="/chat", max_new_tokens=4)
        assert wait_until(lambda: service.admission.waiting == 1, timeout=10)
        with pytest.raises(AppError, match="混雑") as caught:
            clients[2].predict("三", [], api_name="/chat", max_new_tokens=4)
        assert "busy" in str(caught.value)
        running.cancel()
        assert waiting.result(timeout=60) is not None  # the one in line is served next
        assert wait_until(lambda: service.admission.running == 0, timeout=10)
    finally:
        app.close()
    assert wait_until(lambda: not generation_threads(), timeout=5)


def test_out_of_memory_during_generation_is_a_clear_error_and_the_next_request_works(client, demo_engine, monkeypatch):
    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(demo_engine.model, "generate", out_of_memory)
    with pytest.raises(AppError, match="GPU のメモリが足りません") as caught:
        client.predict("こんにちは", [], api_name="/chat", max_new_tokens=8)
    assert "Out of GPU memory" in str(caught.value)
    monkeypatch.undo()
    assert stream(client, "こんにちは", [], max_new_tokens=8, seed=1)
    assert not generation_threads()
