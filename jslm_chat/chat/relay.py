"""A reply's events, from the thread that waits on them to an async consumer, one update per frame.

Waiting in line and generating block, so a job's events are taken in a thread of its own (never
the event loop's shared pool, whose size would cap how many chats can wait or stream at once).
Each event carries the whole reply so far, so when several arrive within one display frame the
consumer gets only the newest: a crowd of fast streams then costs the UI, the network and the
browsers at most one update per chat per frame, however many tokens the engine emits.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Generic, TypeVar

Event = TypeVar("Event")

FRAME_SECONDS = 0.033
"""At most one update per chat this often (two frames at 60 Hz)."""


class _Ended:
    """The thread's last item: the events ran out, or raised ``error``."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class FrameRelay(Generic[Event]):
    """Iterates ``events`` in a daemon thread; ``async for`` yields them, merged to one per frame.

    Events of type ``final`` (a reply's last one) are never merged away. Must be created inside
    the running event loop that consumes it.
    """

    def __init__(self, events: Iterator[Event], frame_seconds: float, final: type) -> None:
        self._events = events
        self._frame_seconds = frame_seconds
        self._final = final
        self._lock = threading.Lock()
        self._pending: list[Event | _Ended] = []
        self._loop = asyncio.get_running_loop()
        self._arrived = asyncio.Event()
        self._ended = asyncio.Event()  # the last event is in: send it without waiting for the frame
        # The caller's context goes along: ZeroGPU's spaces.GPU reads the visitor's request from it.
        context = contextvars.copy_context()
        threading.Thread(target=context.run, args=(self._produce,), name="jslm-reply-events", daemon=True).start()

    def _produce(self) -> None:
        try:
            for event in self._events:
                self._put(event)
        except BaseException as error:  # handed to the consumer, which raises it
            self._put(_Ended(error))
        else:
            self._put(_Ended())

    def _put(self, item: Event | _Ended) -> None:
        with self._lock:
            self._pending.append(item)
            wake = len(self._pending) == 1
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens any more
            if wake:
                self._loop.call_soon_threadsafe(self._arrived.set)
            if isinstance(item, _Ended | self._final):
                self._loop.call_soon_threadsafe(self._ended.set)

    async def _batches(self) -> AsyncIterator[list[Event | _Ended]]:
        """Everything that arrived since the last batch, no sooner than one frame after an update
        (the last event of the stream goes out at once)."""
        sent_at = -self._frame_seconds
        while True:
            await self._arrived.wait()
            wait = sent_at + self._frame_seconds - time.monotonic()
            if wait > 0 and not self._ended.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ended.wait(), wait)
            with self._lock:
                batch, self._pending = self._pending, []
                self._arrived.clear()
            if batch:
                yield batch
                sent_at = time.monotonic()

    async def __aiter__(self) -> AsyncIterator[Event]:
        async for batch in self._batches():
            ended = batch[-1] if isinstance(batch[-1], _Ended) else None
            events = [item for item in batch if not isinstance(item, _Ended)]
            finals = [event for event in events if isinstance(event, self._final)]
            updates = [event for event in events if not isinstance(event, self._final)]
            for event in updates[-1:] + finals:
                yield event
            if ended is not None:
                if ended.error is not None:
                    raise ended.error
                return
