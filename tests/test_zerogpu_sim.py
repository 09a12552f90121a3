"""SIMULATION of ZeroGPU on CPU (tests/zerogpu_sim.py), not a live ZeroGPU Space.

These tests prove the harness itself: the real ``spaces`` 0.51.3 package, with only its device
API client and its CUDA init/move steps replaced, forks a worker, pickles arguments and yielded
values, forwards a close to the worker, reports worker errors the way a Space would, and carries
weights placed on "cuda" at start-up into the worker. Each scenario runs in a fresh subprocess:
ZeroGPU patches torch for the whole process and forks, which must never happen inside pytest.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import torch
import zerogpu_sim
from transformers import AutoModelForCausalLM

REPO = Path(__file__).resolve().parent.parent
REPORT = "SIM-REPORT "  # spaces prints its own debug lines on stdout: the report line is marked

# A toy module-level generator behind spaces.GPU, driven through every path the app relies on.
TOY = r'''
import json, os, sys, threading, time
import gradio as gr
import spaces
import zerogpu_sim

FINALLY_LOG = sys.argv[1]
SEEN = "set before the first call"


@spaces.GPU(duration=lambda n, period=0.0, fail=None: 10 + n)
def count(n, period=0.0, fail=None):
    try:
        for i in range(n):
            if fail == "value":
                raise ValueError("boom: 日本語")
            if fail == "gradio":
                raise gr.Error("GPU のメモリが足りません / Out of GPU memory")
            if fail == "unpicklable":
                yield threading.Event()
            time.sleep(period)
            yield {"i": i, "pid": os.getpid(), "seen": SEEN}
    finally:
        with open(FINALLY_LOG, "a") as log:
            log.write(f"{os.getpid()}\n")


def run(n, **kwargs):
    """Items yielded before any error, then the error's type, title and message."""
    items = []
    try:
        for item in count(n, **kwargs):
            items.append(item)
    except Exception as error:
        return {"items": items, "error": [type(error).__name__, getattr(error, "title", None),
                                          getattr(error, "message", str(error))]}
    return {"items": items, "error": None}


report = {"main_pid": os.getpid(), "first": run(3)}
SEEN = "set after the worker forked"
report["second"] = run(1)
endless = count(10_000, period=0.05)
report["before_close"] = [next(endless) for _ in range(3)]
started = time.monotonic()
endless.close()
report["close_seconds"] = time.monotonic() - started
report["finally_pids_after_close"] = open(FINALLY_LOG).read().split()
report["value_error"] = run(2, fail="value")
report["after_error"] = run(1)
report["gradio_error"] = run(2, fail="gradio")
report["unpicklable_yield"] = run(1, fail="unpicklable")
report["unpicklable_argument"] = run(1, period=threading.Event())
report["scheduled"] = [call["duration_seconds"] for name, call in zerogpu_sim.CALLS if name == "schedule"]
print("SIM-REPORT " + json.dumps(report), flush=True)
'''

# Start-up loading under the patching, ZeroGPU's pack at launch, then greedy decoding in the worker.
LOADING = r"""
import json, sys
import spaces, spaces.zero, torch
from transformers import AutoModelForCausalLM

path, prompt = sys.argv[1], json.loads(sys.argv[2])
report = {}
try:
    AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map={"": "cuda"})
except Exception as error:
    report["device_map_error"] = f"{type(error).__name__}: {error}"
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to("cuda")
report["main_device"] = str(model.device)


@spaces.GPU(duration=10)
def greedy(ids):
    out = model.generate(torch.tensor([ids], device=model.device), max_new_tokens=8, do_sample=False)
    yield {"device": str(model.device), "tokens": out[0, len(ids):].tolist()}


spaces.zero.startup()  # what gr.Blocks.launch runs first on ZeroGPU: torch.pack() to disk, startup report
report["packed"] = spaces.zero.torch.patching.cuda_aliases.get(next(model.parameters()), "?") is None
report["worker"] = list(greedy(prompt))
print("SIM-REPORT " + json.dumps(report), flush=True)
"""


def run_simulated(code: str, *args: str, timeout: float = 120) -> dict:
    """Run ``code`` under the ZeroGPU simulation in a fresh process; return its report line as JSON."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        zerogpu_sim.command("-c", code, *args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(REPORT)]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(lines[-1][len(REPORT) :])


def test_simulated_zerogpu_forks_pickles_forwards_close_and_reports_errors(tmp_path):
    report = run_simulated(TOY, str(tmp_path / "finally.log"))
    first = report["first"]
    worker = first["items"][0]["pid"]
    # Streams through a forked worker; globals that exist at fork time are visible there.
    assert first == {
        "items": [{"i": i, "pid": worker, "seen": "set before the first call"} for i in range(3)],
        "error": None,
    }
    assert worker != report["main_pid"]
    # The worker persists across calls: a global changed after the fork does not reach it.
    assert report["second"]["items"] == [{"i": 0, "pid": worker, "seen": "set before the first call"}]
    # Closing the outer generator (Gradio's cancel) closes the task generator in the worker:
    # its finally has run by the time close() returns, after at most one more item (50 ms here).
    assert [item["pid"] for item in report["before_close"]] == [worker] * 3
    assert report["close_seconds"] < 2.0
    assert report["finally_pids_after_close"] == [str(worker)] * 3
    # An exception that is not gr.Error arrives as a gr.Error whose message is only its class name.
    assert report["value_error"] == {"items": [], "error": ["Error", "ZeroGPU worker error", "ValueError"]}
    # A worker that raised is not reused: the next call forks a fresh one, which sees today's globals.
    fresh = report["after_error"]["items"][0]
    assert fresh["pid"] not in (worker, report["main_pid"]) and fresh["seen"] == "set after the worker forked"
    # A gr.Error raised in the worker arrives with its message intact.
    assert report["gradio_error"]["error"][::2] == ["Error", "GPU のメモリが足りません / Out of GPU memory"]
    # Yielded values and arguments are pickled: locks and events cannot cross.
    assert report["unpicklable_yield"]["error"] == ["Error", "ZeroGPU worker error", "PicklingError"]
    assert report["unpicklable_argument"]["error"][0] == "PicklingError"
    assert "_thread.lock" in report["unpicklable_argument"]["error"][2]
    # A callable duration gets the call's own arguments: 10 + n seconds were asked for each call.
    assert report["scheduled"] == [13, 11, 10_010, 12, 11, 12, 11, 11]


def test_simulated_zerogpu_start_up_placement_reaches_the_worker(tiny_model_dir, llama_tokenizer):
    prompt = llama_tokenizer("[INST] こんにちは [/INST]")["input_ids"]
    report = run_simulated(LOADING, str(tiny_model_dir), json.dumps(prompt))
    # transformers 5 loads in a thread pool, which ZeroGPU's thread-local torch mode does not cover:
    # the loader thread reaches real CUDA (on a Space "Low-level CUDA init reached"; here CPU torch's own error).
    assert "CUDA" in report["device_map_error"]
    # Loading on CPU, then .to("cuda") on the main thread, gives ZeroGPU's "cuda" stand-ins...
    assert report["main_device"] == "cuda:0" and report["packed"]
    # ...whose weights, packed to disk at start-up, come back in the worker: same greedy tokens as plain CPU.
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    expected = plain.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[0, len(prompt) :].tolist()
    assert report["worker"] == [{"device": "cpu", "tokens": expected}]
