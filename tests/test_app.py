"""``app.py`` as a newcomer runs it: --help, a model that cannot load, and a local model directory."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from gradio_client import Client

ROOT = Path(__file__).resolve().parent.parent


def run_app(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "app.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_help_documents_every_flag():
    result = run_app("--help")
    assert result.returncode == 0
    for flag in ("--model", "--demo", "--device", "--dtype", "--host", "--port", "--share", "--concurrency"):
        assert flag in result.stdout
    assert "--queue-size" in result.stdout and "--max-new-tokens-limit" in result.stdout


def test_a_model_that_cannot_load_ends_with_a_clear_message_and_exit_status_1(tmp_path):
    result = run_app("--model", str(tmp_path / "missing-model"))
    assert result.returncode == 1
    assert "モデルを読み込めませんでした" in result.stderr
    assert "Could not load the model" in result.stderr
    assert "--demo" in result.stderr
    assert "Traceback" not in result.stderr


def test_serves_a_local_model_directory_from_the_command_line(tiny_model_dir):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "app.py", "--model", str(tiny_model_dir), "--port", str(port), "--device", "cpu"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    page = response.read().decode("utf-8")
                break
            except OSError:
                assert process.poll() is None, process.stdout.read()
                time.sleep(0.5)
        assert "日本語 StableLM チャット" in page
        client = Client(url, verbose=False)
        result = client.predict("こんにちは", [], api_name="/prompt")
        assert (
            result["prompt"] == "<s>[INST] <<SYS>>\nあなたは役立つアシスタントです。\n<</SYS>>\n\nこんにちは [/INST] "
        )
        job = client.submit("こんにちは", [], api_name="/chat", max_new_tokens=8)
        job.result()
        assert job.status().success
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert re.search(r"loaded .* on cpu \(float32\)", output)
