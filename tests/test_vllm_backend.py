"""VllmBackend against real vLLM servers on the demo model (no mock): prompts, sampling, Stop, faults.

The servers come from ``vllm_server.py`` (started once per session, about a minute on 2 cores).
"""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import wait_until
from vllm_server import VllmServer, free_port

from jslm_chat.backends.vllm import BackendUnavailableError, VllmBackend, VllmReply
from jslm_chat.model.backend import Conversation, GenerationError
from jslm_chat.model.params import GenerationParams
from jslm_chat.model.presets import resolve_preset
from jslm_chat.model.prompt import Turn

FFFD = "\ufffd"
QUESTION = "日本の首都はどこですか？"


def sampling(max_new_tokens: int = 64, *, temperature: float = 0.8, seed: int | None = None) -> GenerationParams:
    return GenerationParams(max_new_tokens, temperature, top_p=0.95, top_k=40, repetition_penalty=1.1, seed=seed)


def greedy(max_new_tokens: int = 64) -> GenerationParams:
    return sampling(max_new_tokens, temperature=0.0)


def endless(max_new_tokens: int) -> GenerationParams:
    """Greedy, running to ``max_new_tokens`` (vLLM's ``ignore_eos``): a long reply to stop."""
    return GenerationParams(max_new_tokens, 0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, ignore_eos=True)


def ask(backend: VllmBackend, message: str = QUESTION, turns: tuple[Turn, ...] = ()) -> Conversation:
    return Conversation(backend.preset.system_prompt, list(turns), message)


def connect(server: VllmServer, model: Path, **options: float) -> VllmBackend:
    return VllmBackend.connect(server.url, resolve_preset(str(model)), str(model), **options)


@pytest.fixture(scope="module")
def backend(vllm_server: VllmServer, demo_model_path: Path) -> VllmBackend:
    return connect(vllm_server, demo_model_path)


@pytest.fixture(scope="module")
def in_process(demo_model_path: Path) -> object:
    """The in-process (transformers) engine on the same model, as the app loads it."""
    from jslm_chat.backends.inprocess.loading import load_inprocess_backend

    return load_inprocess_backend(str(demo_model_path), device="cpu", dtype="float32")


def test_unreachable_server_is_one_bilingual_message_naming_the_url_and_the_fix(demo_model_path):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BackendUnavailableError) as caught:
        VllmBackend.connect(url, resolve_preset(str(demo_model_path)), str(demo_model_path), timeout=2)
    message = str(caught.value)
    assert url in message
    assert "接続できません" in message and "Cannot connect" in message
    assert "vllm.entrypoints.openai.api_server" in message


def test_connect_takes_the_context_window_and_model_name_from_the_server(backend, vllm_server, demo_model_path):
    assert backend.served_model == str(demo_model_path)
    assert backend.context_length == 2048 == backend.preset.context_length
    assert backend.preset.sampling.max_new_tokens == 512  # a quarter of the window at most
    assert backend.runs_on == f"vLLM ({vllm_server.url})"
    assert backend.label.endswith(backend.runs_on)
    assert VllmBackend.default_concurrency == 64


def test_request_maps_every_sampling_value(backend):
    prompt = backend.prepare(ask(backend), 64)
    body = VllmReply(backend, prompt, sampling(64, seed=7)).request_body()
    assert body["prompt"] == prompt.token_ids and body["model"] == backend.served_model
    assert body["stream"] is body["return_token_ids"] is body["skip_special_tokens"] is True
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["top_k"]) == (64, 0.8, 0.95, 40)
    assert (body["repetition_penalty"], body["seed"], body["ignore_eos"]) == (1.1, 7, False)
    assert "seed" not in VllmReply(backend, prompt, greedy()).request_body()
    assert VllmReply(backend, prompt, endless(5)).request_body()["ignore_eos"] is True


def test_server_receives_exactly_the_in_process_prompt_ids(backend, in_process, vllm_server):
    long_reply = "東京です。" * 120
    turns = tuple(Turn(f"質問{i}: {QUESTION}", long_reply) for i in range(6))
    conversation = ask(backend, "京都はどうですか？", turns)
    ours = backend.prepare(conversation, 512)
    theirs = in_process.prepare(conversation, 512)
    assert ours.dropped_turns > 0  # the budget came into play, the same way on both sides
    assert (ours.token_ids, ours.text, ours.dropped_turns) == (theirs.token_ids, theirs.text, theirs.dropped_turns)
    body = {**VllmReply(backend, ours, greedy(1)).request_body(), "stream": False, "stream_options": None}
    request = urllib.request.Request(
        f"{vllm_server.url}/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.load(response)
    assert answer["choices"][0]["prompt_token_ids"] == theirs.token_ids  # no second BOS, nothing re-tokenized


def test_streams_growing_text_in_several_chunks(backend):
    reply = backend.stream(ask(backend), endless(1000))  # about a second: text goes out every 33 ms
    seen = list(reply)
    assert len(seen) >= 5
    assert all(later.startswith(earlier) and later != earlier for earlier, later in itertools.pairwise(seen))
    assert reply.text == seen[-1] and FFFD not in reply.text
    assert (reply.finish_reason, reply.new_tokens) == ("length", 1000)
    assert reply.tokens_per_second and reply.seconds_to_first_token is not None


def test_reply_ends_at_eos_with_its_text_decoded_from_the_token_ids(backend):
    reply = backend.stream(ask(backend), greedy(300))
    text = "".join(piece for piece in _pieces(reply))
    assert reply.finish_reason == "eos" and 0 < reply.new_tokens < 300
    assert text == reply.text and "</s>" not in text and FFFD not in text


def _pieces(reply):
    before = ""
    for text in reply:
        yield text[len(before) :]
        before = text


def test_seed_reproduces_and_another_seed_differs(backend):
    def run(seed: int) -> str:
        reply = backend.stream(ask(backend), sampling(80, temperature=1.0, seed=seed))
        text = list(reply)[-1]
        assert reply.seed == seed
        return text

    first = run(1234)
    assert run(1234) == first
    assert any(run(seed) != first for seed in (1, 2, 3))


def test_greedy_repeats_itself_and_matches_the_in_process_model(backend, in_process):
    conversation = ask(backend)
    first = backend.stream(conversation, greedy(80))
    second = backend.stream(conversation, greedy(80))
    assert list(first)[-1] == list(second)[-1]
    local = in_process.stream(conversation, greedy(80))
    list(local)
    assert first.text == local.text
    assert first.new_tokens == local.new_tokens


def test_http_error_from_vllm_is_shown_with_its_own_message(backend):
    bad = GenerationParams(20, temperature=-1.0, top_p=0.9, top_k=0, repetition_penalty=1.0)  # unvalidated
    with pytest.raises(GenerationError) as caught:
        list(backend.stream(ask(backend), bad))
    message = str(caught.value)
    assert "HTTP 400" in message and "temperature" in message
    assert "vLLM サーバー" in message and "vLLM server" in message
    assert list(backend.stream(ask(backend), greedy(5)))  # the backend goes on serving


def _stop_from_another_thread(backend: VllmBackend, reply: VllmReply, when: object) -> dict[str, float]:
    """Iterate ``reply`` in a thread; once ``when()``, stop it from here. Returns the timings."""
    consumer = threading.Thread(target=lambda: list(reply))
    consumer.start()
    assert wait_until(when, timeout=30, interval=0.005)
    asked = time.perf_counter()
    reply.stop()
    returned = time.perf_counter()
    assert wait_until(lambda: backend.requests_in_flight() == 0, timeout=5, interval=0.01)
    idle = time.perf_counter()
    consumer.join(5)
    assert not consumer.is_alive()
    return {"stop_call": returned - asked, "idle": idle - asked}


def test_stop_while_decoding_aborts_on_the_server_within_a_second(backend):
    reply = backend.stream(ask(backend), endless(1500))
    timings = _stop_from_another_thread(backend, reply, lambda: reply.new_tokens >= 20)
    assert timings["stop_call"] < 0.05 and timings["idle"] < 1.0, timings
    assert reply.finish_reason == "stopped" and 20 <= reply.new_tokens < 1500


def test_stop_during_prefill_aborts_on_the_server_within_a_second(long_context_vllm_server, demo_model_path):
    backend = connect(long_context_vllm_server, demo_model_path)
    message = "".join(f"今日は{i}番目のいい天気ですね。" for i in range(1400))  # ~14k tokens: ~0.8 s of prefill
    reply = backend.stream(ask(backend, message), endless(100))
    assert reply.prompt.num_tokens > 12000
    timings = _stop_from_another_thread(backend, reply, lambda: backend.requests_in_flight() > 0)
    assert timings["stop_call"] < 0.05 and timings["idle"] < 1.0, timings
    assert reply.new_tokens == 0  # stopped before the first token
    assert reply.finish_reason == "stopped"


def _fail_mid_reply(backend: VllmBackend, server: VllmServer, signum: int) -> tuple[str, float]:
    """Start an endless reply, send ``signum`` to the server at its first chunk: the error and how long it took.

    The reply asks for nearly the whole 16k window (~16 s here), so even a test process starved of CPU
    by vLLM's busy threads signals the server long before the reply could have ended on its own.
    """
    reply = backend.stream(ask(backend), endless(backend.preset.context_length - 1000))
    chunks = iter(reply)
    next(chunks)
    server.signal(signum)
    started = time.perf_counter()
    with pytest.raises(GenerationError) as caught:
        for _ in chunks:
            pass
    assert reply.finish_reason == "error"
    return str(caught.value), time.perf_counter() - started


def test_server_hangs_or_dies_mid_reply_then_comes_back(long_context_vllm_server, demo_model_path):
    server = long_context_vllm_server
    backend = connect(server, demo_model_path, probe_seconds=1.0)
    message, seconds = _fail_mid_reply(backend, server, signal.SIGSTOP)  # silent: /health does not answer
    server.signal(signal.SIGCONT)
    assert seconds < 1.0 + 5.0 + 2.0  # one probe interval, one /health timeout, slack
    assert "応答しません" in message and "stopped answering" in message
    assert wait_until(lambda: backend.requests_in_flight() == 0, timeout=10)  # the hung reply was aborted
    assert list(backend.stream(ask(backend), greedy(5)))  # the same backend, nothing restarted

    message, seconds = _fail_mid_reply(backend, server, signal.SIGKILL)
    assert seconds < 5
    assert server.url in message and "もう一度送信" in message and "send the message again" in message
    with pytest.raises(GenerationError, match=r"Connection(Refused|Reset)Error"):  # while it is down: at once, no hang
        list(backend.stream(ask(backend), greedy(5)))
    server.restart()
    again = backend.stream(ask(backend), greedy(20))
    assert list(again) and again.finish_reason in ("eos", "length")
