"""Daemon threads that run one piece of work after another, and as many as run at once.

Compiled decoding runs its replies here: ``torch.compile`` keeps the CUDA graphs it records per
thread, and each thread holds its own static caches, so threads that live on keep both, where a new
thread per reply would allocate and record them again. A thread counts as idle before its waiter
hears the work returned, so work submitted right after never starts a thread more.
Daemon threads, unlike ``ThreadPoolExecutor``'s, never hold up the exit of the app.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class LongLivedThreads:
    """Runs submitted work at once, in an idle thread or else in a new one."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._idle = 0
        self._started = 0
        self._lock = threading.Lock()

    def submit(self, work: Callable[[], None]) -> Callable[[], object]:
        """Start ``work``; returns a function that waits until it has returned."""
        returned = threading.Event()

        def job() -> None:
            try:
                work()
            except Exception:  # the thread serves on
                logger.exception("background work failed")
            finally:
                with self._lock:  # idle before anyone hears it returned: the next work takes this thread
                    self._idle += 1
                returned.set()

        with self._lock:
            if self._idle:
                self._idle -= 1  # that thread takes this job
            else:
                self._started += 1
                threading.Thread(target=self._serve, name=f"{self.name}-{self._started}", daemon=True).start()
            self._jobs.put(job)
        return returned.wait

    def _serve(self) -> None:
        while True:
            self._jobs.get()()
