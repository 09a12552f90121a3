"""Without the Hugging Face Hub, a model that is not cached fails in seconds with one clear message."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from jslm_chat.backends.hub import hub_reachable, local_files_only
from jslm_chat.backends.inprocess.loading import ModelLoadError, load_inprocess_backend

ROOT = Path(__file__).resolve().parent.parent
UNREACHABLE_HUB = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub cannot be reached and nothing says "offline" beforehand (a laptop on a train)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE_HUB)


def uncached_model_id() -> str:
    return f"jslm-chat-tests/not-cached-{uuid.uuid4().hex[:12]}"


def test_the_probe_tells_a_listening_host_from_a_refusing_one():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert hub_reachable(f"http://127.0.0.1:{server.getsockname()[1]}")
    assert not hub_reachable(UNREACHABLE_HUB)


def test_a_local_directory_or_an_offline_setting_needs_no_probe(no_hub, tmp_path, monkeypatch, caplog):
    assert local_files_only(str(tmp_path)) is False
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert local_files_only(uncached_model_id()) is False  # transformers is offline by itself
    assert not caplog.records


def test_an_uncached_model_without_the_hub_fails_within_seconds_saying_so_once(no_hub, caplog):
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as caught:
        load_inprocess_backend(uncached_model_id(), device="cpu")
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"{elapsed:.1f} s (huggingface_hub's retries take about 24 s)"
    assert "no network connection and no cached copy" in str(caught.value)
    messages = [record.getMessage() for record in caplog.records]
    assert sum("Cannot reach the Hugging Face Hub" in message for message in messages) == 1
    assert not [message for message in messages if "Retrying" in message]


def test_app_py_prints_the_hub_line_once_and_no_retries(tmp_path):
    environment = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    environment |= {"HF_ENDPOINT": UNREACHABLE_HUB, "HF_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "app.py", "--model", uncached_model_id()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env=environment,
    )
    assert result.returncode == 1
    assert result.stderr.count("Cannot reach the Hugging Face Hub") == 1
    assert "Retrying" not in result.stderr
    assert result.stderr.count("Could not load the model") == 1
    assert "Traceback" not in result.stderr
