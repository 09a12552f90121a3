"""The demo model loaded in int8 and in nf4 with real bitsandbytes on the CPU, chatted with through /chat:
streaming, Stop, cache reuse across turns and the header, as ``python app.py --demo --quantize MODE`` serves it."""

from __future__ import annotations

import itertools

import httpx
import pytest
from gradio_client import Client
from helpers import generation_threads, launch_app, wait_until

from jslm_chat.model.backend import Backend
from jslm_chat.server import load_for
from jslm_chat.settings import Settings

FIRST = [{"role": "user", "content": "こんにちは。"}]


@pytest.fixture(scope="module", params=["int8", "nf4"])
def quantized(request, demo_model_path):
    """(mode, backend, url) of the app serving the demo model loaded in ``mode``."""
    backend = load_for(Settings(demo=True, quantize=request.param))
    app, url, _ = launch_app(backend, concurrency=1, queue_size=4)
    yield request.param, backend, url
    app.close()
    backend.close()


@pytest.fixture
def replies(monkeypatch):
    """Every reply the backend streams, in order (observed, not changed)."""
    seen = []
    original = Backend.stream

    def recorded(self, conversation, params):
        reply = original(self, conversation, params)
        seen.append(reply)
        return reply

    monkeypatch.setattr(Backend, "stream", recorded)
    return seen


def test_the_layers_are_bitsandbytes_and_the_header_says_so(quantized):
    mode, backend, url = quantized
    layer = type(backend.model.model.layers[0].mlp.down_proj).__name__
    assert layer == {"int8": "Linear8bitLt", "nf4": "Linear4bit"}[mode]
    assert backend.runs_on == f"cpu · float16 · {mode}"
    page = httpx.get(url, timeout=30).text + httpx.get(f"{url.rstrip('/')}/config", timeout=30).text
    assert f"cpu · float16 · {mode}" in page


@pytest.mark.usefixtures("paced_generation")
def test_a_reply_streams_in_growing_chunks_and_the_next_turn_reuses_the_cache(quantized, replies):
    _, _, url = quantized
    client = Client(url, verbose=False)
    first = list(client.submit("こんにちは。", [], api_name="/chat", max_new_tokens=32, seed=1))
    assert len(first) > 1 and all(later.startswith(earlier) for earlier, later in itertools.pairwise(first))
    assert first[-1].strip() and "\ufffd" not in first[-1]
    history = [*FIRST, {"role": "assistant", "content": first[-1]}]
    second = client.predict("日本の首都はどこですか？", history, api_name="/chat", max_new_tokens=16, seed=2)
    assert second.strip()
    turn_one, turn_two = replies[-2], replies[-1]
    assert turn_two.reused_tokens >= turn_one.prompt.num_tokens  # the whole first prompt came from the cache
    assert turn_two.reused_tokens < turn_two.prompt.num_tokens


@pytest.mark.usefixtures("endless_replies", "paced_generation")
def test_stop_ends_the_quantized_generation_and_the_next_chat_works(quantized):
    _, _, url = quantized
    client = Client(url, verbose=False)
    job = client.submit("長い話をしてください。", [], api_name="/chat", max_new_tokens=1500, seed=3)
    assert wait_until(lambda: len(job.outputs()) >= 3, timeout=120)
    job.cancel()
    assert wait_until(lambda: not generation_threads(), timeout=10), "the generation thread outlived its Stop"
    assert client.predict("ありがとう。", [], api_name="/chat", max_new_tokens=8, seed=4).strip()
