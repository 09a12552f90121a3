"""The OpenAI-compatible API of the app with ``--backend vllm`` in front of a real vLLM server (demo
model), driven by the ``openai`` SDK: the same replies as ``/chat``, real usage, stop strings cut by
the app, and a closed stream that leaves vLLM idle."""

from __future__ import annotations

import openai
import pytest
from gradio_client import Client
from helpers import launch_app, wait_until

from jslm_chat.backends.vllm import VllmBackend
from jslm_chat.server import load_for
from jslm_chat.settings import Settings

HISTORY = [{"role": "user", "content": "こんにちは"}, {"role": "assistant", "content": "こんにちは！"}]
QUESTION = "京都について教えて"
MESSAGES = [*HISTORY, {"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def vllm_app(vllm_server):
    backend = load_for(Settings(demo=True, backend="vllm", vllm_url=vllm_server.url))
    assert isinstance(backend, VllmBackend)
    app, url, _ = launch_app(backend)
    sdk = openai.OpenAI(base_url=url + "v1", api_key="unused", max_retries=0, timeout=120)
    yield Client(url, verbose=False), sdk, backend, sdk.models.list().data[0].id
    app.close()


def chat_reply(gradio: Client, **settings: object) -> str:
    return list(gradio.submit(QUESTION, HISTORY, api_name="/chat", **settings))[-1]


def test_greedy_and_seeded_replies_equal_chat_and_usage_equals_prompt(vllm_app):
    gradio, sdk, _, model = vllm_app
    whole = sdk.chat.completions.create(model=model, messages=MESSAGES, max_tokens=40, temperature=0)
    assert whole.choices[0].message.content == chat_reply(gradio, max_new_tokens=40, temperature=0.0)
    assert whole.usage.prompt_tokens == gradio.predict(QUESTION, HISTORY, api_name="/prompt")["num_tokens"]
    stream = sdk.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=40, temperature=0.9, seed=5, stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == chat_reply(gradio, max_new_tokens=40, temperature=0.9, seed=5)


def test_stop_strings_cut_the_reply_and_end_the_request_on_the_server(vllm_app):
    gradio, sdk, backend, model = vllm_app
    full = chat_reply(gradio, max_new_tokens=60, temperature=0.0)
    stop = full[12:15]
    expected = full[: full.index(stop)]
    whole = sdk.chat.completions.create(messages=MESSAGES, model=model, max_tokens=60, temperature=0, stop=stop)
    assert (whole.choices[0].message.content, whole.choices[0].finish_reason) == (expected, "stop")
    stream = sdk.chat.completions.create(
        messages=MESSAGES, model=model, max_tokens=60, temperature=0, stop=[stop], stream=True
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == expected
    assert wait_until(lambda: backend.requests_in_flight() == 0, timeout=30)


@pytest.mark.usefixtures("endless_replies")
def test_closing_the_stream_leaves_vllm_idle(vllm_app):
    _, sdk, backend, model = vllm_app
    before = backend.metric("vllm:generation_tokens_total")
    stream = sdk.chat.completions.create(messages=MESSAGES, model=model, max_tokens=1900, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()
    assert wait_until(lambda: backend.requests_in_flight() == 0, timeout=30)
    assert backend.metric("vllm:generation_tokens_total") - before < 1900  # aborted, not run to its end
