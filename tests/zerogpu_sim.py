"""Simulation of the `spaces` ZeroGPU runtime on CPU; not a live ZeroGPU Space.

Runs the real ``spaces`` package (0.51.3) with ``SPACES_ZERO_GPU=true`` on this CPU machine:
``spaces.GPU`` really patches torch in the main process, really forks a worker process on the
first call, really pickles the arguments and every yielded value through its ``multiprocessing``
queues, really forwards a close of the outer generator to the worker, and Gradio's launch really
runs ZeroGPU's start-up (``torch.pack()``: the "cuda" weights are written to disk). Replaced, and
nothing else:

- ``spaces.zero.client.api_client``: the HTTP client of the Space's ZeroGPU device API. Its four
  calls (``APIClient.startup_report``, ``.schedule``, ``.allow``, ``.release``; reached through
  ``client.startup_report``, ``client.schedule``, ``client.allow`` and ``client.release``) go to
  :class:`SimDeviceAPI`, which grants every request at once (``idle=True``: the previous worker
  is reused, as on a Space whose GPU stayed attached) and records it in :data:`CALLS`.
- ``spaces.zero.torch.init``: in the worker it sets ``CUDA_VISIBLE_DEVICES`` and initialises CUDA
  (``torch.Tensor([0]).cuda()``); here a no-op, CPU torch has no CUDA.
- ``spaces.zero.torch.move``: in the worker it copies the weights parked at start-up (in memory,
  or packed to disk by ``torch.pack()``) onto the GPU and points each stand-in tensor at the copy;
  here the same, onto CPU memory. The worker's model then computes on CPU with the real weights.

Three stand-ins for what CPU torch lacks and ``spaces`` reads at import: ``torch.version.cuda`` is
``None`` (``spaces.zero.torch.static`` calls ``.startswith`` on it), so :func:`install` sets it to
"12.8" while ``spaces`` is imported and restores ``None`` right after; ``torch._C._cuda_init`` is
missing (``patching`` saves it to restore it in the worker), so a function raising "Torch not
compiled with CUDA enabled" takes its place. Reaching real CUDA thus still fails, as it should.
And the import-time check ``spaces.zero.torch.is_in_bad_fork()`` sends
``torch.cuda._is_in_bad_fork`` to a forked process pool, which CPU torch defines as a lambda that
cannot be pickled: a named function returning False stands in during the import.

What this cannot show: real CUDA (inside the worker ``torch.cuda.is_available()`` is False and
tensors stay on CPU, so code must take its device from the model, never hard-code "cuda"), the
real scheduler's queueing and quota refusals, and the GPU time limit being enforced. Nor the
target's own import order: ``spaces`` is imported (and torch patched) before the target runs,
whereas on a Space it happens wherever the app first imports ``spaces``, which must come before
the model is loaded.

ZeroGPU patches torch for the whole process and forks, so run it only in a fresh subprocess::

    python tests/zerogpu_sim.py -m MODULE [ARGS...]   # e.g. -m app --demo
    python tests/zerogpu_sim.py SCRIPT.py [ARGS...]
    python tests/zerogpu_sim.py -c CODE [ARGS...]

Each runs its target as ``__main__`` after :func:`install`. Granted schedules are logged to
stderr as ``zerogpu-sim: schedule duration_seconds=N``. SIGTERM ends the process and kills its
workers (by default Python would die alone and leave the forked workers running).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

SIM_API_URL = "http://zerogpu-sim.invalid"  # never contacted: the client is replaced
SIM_CUDA_VERSION = "12.8"
CALLS: list[tuple[str, dict[str, Any]]] = []  # (device API call, its arguments), in this process


class SimDeviceAPI:
    """Stands in for ``spaces.zero.api.APIClient``: grants everything, records every call."""

    def startup_report(self) -> Any:
        """Start-up report after ``torch.pack()``."""
        return self._ok("startup_report")

    def schedule(
        self,
        cgroup_path: str,
        task_id: int = 0,
        token: str | None = None,
        token_version: int = 1,
        duration_seconds: int | None = None,
        enable_queue: bool = True,
        gpu_size: str | None = None,
    ) -> Any:
        """A GPU granted at once, with the previous worker still usable (``idle=True``)."""
        from spaces.zero.api import ScheduleMetadata, ScheduleResponse

        CALLS.append(("schedule", {"task_id": task_id, "duration_seconds": duration_seconds, "gpu_size": gpu_size}))
        print(f"zerogpu-sim: schedule duration_seconds={duration_seconds}", file=sys.stderr, flush=True)
        response = ScheduleResponse(idle=True, nvidiaIndex=0, nvidiaUUID="sim-gpu-0", allowToken=uuid.uuid4().hex)
        return response, ScheduleMetadata()

    def allow(self, allow_token: str, pid: int) -> Any:
        """The worker process asks to use the granted GPU (runs in the worker)."""
        return self._ok("allow", pid=pid)

    def release(self, allow_token: str, fail: bool = False) -> Any:
        """The GPU goes back when the call ends (``fail`` after an error or abort)."""
        return self._ok("release", fail=fail)

    def _ok(self, name: str, **arguments: Any) -> Any:
        import httpx

        CALLS.append((name, arguments))
        return httpx.codes.OK


_DEVICE_API = SimDeviceAPI()


def _no_cuda_init() -> None:
    """Stands in for ``torch._C._cuda_init``, which CPU torch lacks and ``spaces`` saves at import."""
    raise RuntimeError("Torch not compiled with CUDA enabled (zerogpu_sim: CPU torch)")


def _never_in_bad_fork() -> bool:
    """Stands in for CPU torch's ``torch.cuda._is_in_bad_fork``, a lambda that cannot be pickled."""
    return False


def _init_on_cpu(nvidia_uuid: str) -> None:
    """Replaces ``spaces.zero.torch.init``: there is no CUDA to initialise."""


def _move_to_cpu(callback: Callable[[int], Any] | None = None) -> None:
    """Replaces ``spaces.zero.torch.move``: the parked weights go to CPU memory instead of the GPU."""
    from spaces.zero.torch import patching

    for fake, original in patching.cuda_aliases.items():
        if original is not None:
            fake.data = original
    for pack in patching.tensor_packs:
        _unpack_to_cpu(pack)


def _unpack_to_cpu(pack: Any) -> None:
    """Read a ``ZeroGPUTensorPack`` file (written by ``torch.pack()``) back into CPU tensors."""
    import torch

    entries = [entry for batch in pack.batches for entry in batch] + list(pack.big_tensors)
    with open(pack.path(), "rb") as file:
        for meta, size, aligned_size in entries:
            raw = bytearray(file.read(aligned_size)[:size])
            storage = torch.frombuffer(raw, dtype=torch.uint8).untyped_storage() if size else torch.UntypedStorage(0)
            tensor = torch.tensor([], dtype=meta.dtype).set_(storage, 0, meta.shape, meta.stride())
            for fake in pack.fakes[meta]:
                fake.data = tensor


def install(offload_dir: str | None = None) -> None:
    """Turn ZeroGPU on, import the real ``spaces`` and replace only its network and CUDA steps.

    Call it first in a fresh process, before anything imports ``spaces`` (gradio does).
    ``offload_dir`` is where start-up packs the weights (default: a new temporary folder).
    """
    if "spaces" in sys.modules:
        raise RuntimeError("zerogpu_sim.install() must run before anything imports spaces")
    os.environ["SPACES_ZERO_GPU"] = "true"
    os.environ["SPACES_ZERO_DEVICE_API_URL"] = SIM_API_URL
    if offload_dir is None:
        scratch = tempfile.mkdtemp(prefix="zerogpu-sim-")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)  # forked workers never run atexit
        offload_dir = str(Path(scratch) / "tensors")
    os.environ["ZEROGPU_OFFLOAD_DIR"] = offload_dir
    import torch

    real_cuda_version = torch.version.cuda
    torch.version.cuda = real_cuda_version or SIM_CUDA_VERSION  # read once, at import
    if not hasattr(torch._C, "_cuda_init"):
        torch._C._cuda_init = _no_cuda_init
    real_bad_fork_check = torch.cuda._is_in_bad_fork
    torch.cuda._is_in_bad_fork = _never_in_bad_fork  # sent to a forked pool at import: must pickle
    try:
        import spaces  # patches torch, wraps gr.Blocks.launch
        import spaces.zero.client
        import spaces.zero.torch
    finally:
        torch.version.cuda = real_cuda_version
        torch.cuda._is_in_bad_fork = real_bad_fork_check
    spaces.zero.client.api_client = lambda: _DEVICE_API
    spaces.zero.torch.init = _init_on_cpu
    spaces.zero.torch.move = _move_to_cpu


def _end_with_workers(signum: int, frame: object) -> None:
    """On SIGTERM, kill the forked workers too: Python's default would leave them orphaned."""
    for child in multiprocessing.active_children():
        child.kill()
    raise SystemExit(128 + signum)


def command(*target: str) -> list[str]:
    """The argv that runs ``target`` (``-m MODULE ...``, ``-c CODE ...`` or ``SCRIPT ...``) simulated."""
    return [sys.executable, str(Path(__file__).resolve()), *target]


def main(argv: list[str]) -> None:
    """``-m MODULE | -c CODE | SCRIPT`` then its arguments, run as ``__main__`` under the simulation."""
    if not argv or (argv[0] in ("-m", "-c") and len(argv) < 2):
        raise SystemExit("usage: python tests/zerogpu_sim.py (-m MODULE | -c CODE | SCRIPT.py) [ARGS...]")
    install()
    signal.signal(signal.SIGTERM, _end_with_workers)
    if argv[0] in ("-m", "-c"):
        sys.path.insert(0, os.getcwd())  # as ``python -m`` / ``python -c`` would
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        exec(compile(argv[1], "<zerogpu-sim>", "exec"), {"__name__": "__main__"})
    else:
        sys.argv = list(argv)
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    import zerogpu_sim  # the importable copy, so simulated code reads the same CALLS

    zerogpu_sim.main(sys.argv[1:])
