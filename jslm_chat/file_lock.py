"""An exclusive lock on an open file, across processes (``flock``); none where ``fcntl`` is missing (Windows)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import IO, Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]  # the module is optional there

AVAILABLE = fcntl is not None
"""Whether locks are real here (on Windows :func:`exclusive` only marks the spot)."""


@contextlib.contextmanager
def exclusive(handle: IO[Any]) -> Iterator[None]:
    """Hold an exclusive lock on the open file ``handle`` for the ``with`` block."""
    if fcntl is None:
        yield
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
