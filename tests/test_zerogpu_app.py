"""SIMULATION of ZeroGPU on CPU (tests/zerogpu_sim.py), not a live ZeroGPU Space: the app itself.

The demo model is loaded as on a ZeroGPU Space (``SPACES_ZERO_GPU=true``, ``--device cuda``:
loaded on the CPU, then moved to "cuda" on the main thread under ``spaces``' patching), and every
reply runs through the real ``spaces.GPU``: a forked worker, pickled arguments and records, a
forwarded close. One subprocess runs all scenarios (start-up costs seconds) and prints a report.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import zerogpu_sim

REPO = Path(__file__).resolve().parent.parent
REPORT = "SIM-REPORT "

SCENARIOS = r"""
import json, multiprocessing, sys, threading, time
import torch
from gradio_client import Client
from jslm_chat.backends.inprocess import zerogpu
from jslm_chat.chat.service import ChatService, Done, Streaming
from jslm_chat.server import create_app, launch, load_for
from jslm_chat.settings import Settings
from jslm_chat.web.text import status_line

SETTINGS = {"max_new_tokens": 40, "temperature": 0.7, "top_p": 0.95, "top_k": 50, "repetition_penalty": 1.1, "seed": 1}
FAILING = 13  # a request for exactly this many tokens fails inside the worker, as out of memory


def worker_cpu_seconds():
    total = 0.0
    for child in multiprocessing.active_children():
        with open(f"/proc/{child.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / 100
    return total


def idle_after(seconds_quiet=0.5, limit=10.0):
    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = worker_cpu_seconds()
        time.sleep(seconds_quiet)
        if worker_cpu_seconds() - before < 0.05:
            return time.monotonic() - started - seconds_quiet
    return None


report = {"zerogpu": zerogpu.enabled(), "wrapped": zerogpu.stream_on_gpu is not zerogpu._records_on_gpu}
backend = load_for(Settings(demo=True, device="cuda"))
report["runs_on"] = backend.runs_on
generate = backend.model.generate


def maybe_out_of_memory(*args, **kwargs):
    if kwargs["generation_config"].max_new_tokens == FAILING:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    return generate(*args, **kwargs)


backend.model.generate = maybe_out_of_memory  # before the first call: the forked worker inherits it
service = ChatService(backend, 2000)

job = service.start(service.request("こんにちは", [], SETTINGS))
events = list(job.events())
done = events[-1]
report["reply"] = {
    "chunks": sum(isinstance(event, Streaming) for event in events),
    "text": done.text,
    "finish_reason": done.finish_reason,
    "new_tokens": job.reply.new_tokens,
    "tokens_per_second": job.reply.tokens_per_second,
    "status": status_line(job.reply, backend.context_length, done.finish_reason),
}

long = {**SETTINGS, "max_new_tokens": 1900, "ignore_eos": True}
job = service.start(service.request("長いお話をしてください。", [], long))
events = job.events()
for _ in range(3):
    next(events)
stopped_at = time.monotonic()
job.stop()
rest = list(events)
report["stop"] = {
    "finish_reason": rest[-1].finish_reason,
    "new_tokens": job.reply.new_tokens,
    "returned_after": time.monotonic() - stopped_at,
    "worker_idle_after": idle_after(),
}

job = service.start(service.request("こんにちは", [], {**SETTINGS, "max_new_tokens": FAILING}))
try:
    list(job.events())
    report["error"] = None
except Exception as error:
    report["error"] = [type(error).__name__, str(error)]
after_error = service.start(service.request("こんにちは", [], SETTINGS))
report["after_error"] = list(after_error.events())[-1].finish_reason

settings = Settings(demo=True, device="cuda", host="127.0.0.1", port=int(sys.argv[1]))
app, app_service = create_app(settings, backend=backend)
launch(app, app_service, settings, block=False)
client = Client(f"http://127.0.0.1:{settings.port}/", verbose=False)
report["api_chunks"] = len(list(client.submit("京都について教えて", [], api_name="/chat", max_new_tokens=30, seed=2)))
import httpx
body = {"messages": [{"role": "user", "content": "京都について教えて"}], "max_tokens": 30, "seed": 2, "stream": True}
with httpx.stream("POST", f"http://127.0.0.1:{settings.port}/v1/chat/completions", json=body, timeout=120) as sse:
    events = [json.loads(line[6:]) for line in sse.iter_lines() if line.startswith("data: {")]
report["openai"] = {
    "status": sse.status_code,
    "text": "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices")),
    "finish": [e["choices"][0]["finish_reason"] for e in events if e.get("choices")][-1],
    "errors": [e["error"] for e in events if "error" in e],
}
report["api_text"] = list(client.submit("京都について教えて", [], api_name="/chat", max_new_tokens=30, seed=2))[-1]
app.close()
print("SIM-REPORT " + json.dumps(report, ensure_ascii=False), flush=True)
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from helpers import free_port

    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    result = subprocess.run(
        zerogpu_sim.command("-c", SCENARIOS, str(free_port())),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith(REPORT)]
    assert lines, f"no report (exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return json.loads(lines[-1].removeprefix(REPORT))


def test_the_model_loads_under_the_patching_and_replies_go_through_spaces_gpu(report):
    assert report["zerogpu"] and report["wrapped"]
    assert report["runs_on"] == "cuda (ZeroGPU) · float16"  # fp16 on "cuda", as on a Space


def test_a_reply_streams_from_the_worker_with_the_right_figures(report):
    reply = report["reply"]
    assert reply["chunks"] > 1
    assert reply["text"].strip() and "\ufffd" not in reply["text"]
    assert reply["finish_reason"] in ("eos", "length")
    assert reply["new_tokens"] > 1
    assert reply["tokens_per_second"] and reply["tokens_per_second"] > 0
    assert reply["status"].startswith("完了")
    assert "速度 (speed): –" not in reply["status"]


def test_stop_makes_the_worker_idle_within_seconds(report):
    stop = report["stop"]
    assert stop["finish_reason"] == "stopped"
    assert stop["new_tokens"] < 1900
    assert stop["returned_after"] < 2.0
    assert stop["worker_idle_after"] is not None and stop["worker_idle_after"] < 2.0


def test_an_error_in_the_worker_reaches_the_user_in_both_languages_and_the_next_reply_works(report):
    kind, message = report["error"]
    assert kind == "GenerationError"
    assert "GPU のメモリが足りません" in message and "Out of GPU memory" in message
    assert report["after_error"] in ("eos", "length")


def test_the_api_streams_through_the_worker(report):
    assert report["api_chunks"] > 1


def test_the_openai_api_outside_gradios_queue_is_served_by_the_worker_like_chat(report):
    openai_reply = report["openai"]
    assert openai_reply["status"] == 200 and not openai_reply["errors"]
    assert openai_reply["finish"] in ("stop", "length")
    assert openai_reply["text"] == report["api_text"]  # same seed, same reply as /chat
