"""bench/bench_gpu.py cannot rot: its tiny configuration runs on the CPU and prints its whole table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_benchmark_runs_on_the_cpu_with_a_tiny_config_and_compile():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--small", "--device", "cpu", "--compile"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "memory bandwidth: 4.8e+12 B/s (the default: H200)" in out
    paths = ["memory-bandwidth bound", "bare generate()", "+ stop criterion", "+ streamer", "backend.stream()"]
    for path in [*paths, "static cache + compile", "backend.stream(), compiled"]:
        assert re.search(rf"^  {re.escape(path)} +\d+\.\d", out, re.MULTILINE), path
    rows = re.findall(r"^ +(\d+) +(\d+) +(\d+\.\d) +(\d+\.\d)$", out, re.MULTILINE)
    assert [round(int(prompt), -2) for prompt, *_ in rows] == [500, 2000, 3500]  # about 512, 2,048, 3,500
    assert all(int(prompt) - 40 < int(reused) < int(prompt) for prompt, reused, *_ in rows)
    stop = r"^static cache \+ compile: a stop set from another thread ended generation after \d+ more step"
    assert re.search(stop, out, re.MULTILINE)


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_the_gpu_benchmark_runs_each_quantized_mode_with_real_bitsandbytes(mode):
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--small", "--device", "cpu", "--quantize", mode],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert f"tiny config, random weights ({mode}), on cpu" in out
    assert re.search(r"^  backend\.stream\(\) +\d+\.\d", out, re.MULTILINE)
    assert len(re.findall(r"^ +(\d+) +(\d+) +(\d+\.\d) +(\d+\.\d)$", out, re.MULTILINE)) == 3
    assert re.search(rf"^weights in memory \({mode}\): \d+\.\d MiB$", out, re.MULTILINE)


def test_the_gpu_benchmark_refuses_compile_with_quantize():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--small", "--compile", "--quantize", "nf4"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2 and "--compile does not work with --quantize" in done.stderr


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_torchao_int4_mode_is_refused_without_a_cuda_gpu_with_a_clear_message(device):
    """torchao's int4 weight-only kernels (tinygemm) run on CUDA only: on this CPU machine the mode is
    refused by the argument check (exit status 2, the reason and the fix), before any model is built."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--small", "--device", device,
         "--quantize", "torchao-int4"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert "--quantize torchao-int4 needs a CUDA GPU (torchao's int4 weight-only kernels, tinygemm" in done.stderr
    assert f"{device!r} is not one here. Measure it on a GPU with --device cuda." in done.stderr


def test_the_quantize_choices_name_the_torchao_speed_option():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--quantize", "int4"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2
    choices = re.search(r"invalid choice: '?int4'? \(choose from (.*)\)", done.stderr)
    assert choices and choices[1].replace("'", "").split(", ") == ["none", "int8", "nf4", "torchao-int4"]
