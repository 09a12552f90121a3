"""ZeroGPU support: the part of a reply that needs the GPU runs inside ``spaces.GPU``.

Outside a ZeroGPU Space ``spaces.GPU`` does nothing, and without the ``spaces`` package the
function runs as it is. Only the token streaming is wrapped, never the wait for a slot, so a
request waiting in line never holds a GPU.
"""

from __future__ import annotations

from collections.abc import Iterator

from .engine import Reply

GPU_SECONDS = 120  # ZeroGPU's time budget for one reply


def _stream(reply: Reply) -> Iterator[str]:
    """The growing reply text, while the GPU is attached."""
    yield from reply


try:
    import spaces
except ImportError:  # pragma: no cover - spaces is in requirements.txt
    stream_on_gpu = _stream
else:
    stream_on_gpu = spaces.GPU(duration=GPU_SECONDS)(_stream)
