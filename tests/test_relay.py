"""FrameRelay: events from a thread to an async consumer, merged to one update per frame."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Iterator

import pytest

from jslm_chat.chat.relay import FrameRelay

FRAME = 0.033


class Final(int):
    """The last event of a stream: never merged away."""


async def collect(relay: FrameRelay[int]) -> list[int]:
    return [event async for event in relay]


def test_a_fast_stream_is_merged_to_its_newest_updates_and_keeps_its_final_event():
    def events() -> Iterator[int]:
        yield from range(1, 20_001)
        yield Final(-1)

    async def run() -> list[int]:
        return await collect(FrameRelay(events(), FRAME, final=Final))

    started = time.monotonic()
    received = asyncio.run(run())
    assert isinstance(received[-1], Final) and received[-2] == 20_000
    assert received[:-1] == sorted(received[:-1])
    frames = (time.monotonic() - started) / FRAME
    assert len(received) <= frames + 3 < 200, received  # 20,000 updates: one per frame, and the final one


def test_a_consumer_that_keeps_up_gets_every_event_in_order():
    delivered = [threading.Event() for _ in range(6)]

    def events() -> Iterator[int]:
        for i in range(6):
            yield i
            assert delivered[i].wait(10)  # the next one only once this one has been received

    async def run() -> list[int]:
        received = []
        async for event in FrameRelay(events(), FRAME, final=Final):
            received.append(event)
            delivered[event].set()
        return received

    assert asyncio.run(run()) == [0, 1, 2, 3, 4, 5]


def test_an_error_in_the_thread_reaches_the_consumer_after_the_updates_before_it():
    failure = RuntimeError("the engine broke")

    def events() -> Iterator[int]:
        yield 1
        raise failure

    async def run(received: list[int]) -> None:
        async for event in FrameRelay(events(), FRAME, final=Final):
            received.append(event)

    received: list[int] = []
    with pytest.raises(RuntimeError) as caught:
        asyncio.run(run(received))
    assert caught.value is failure and received == [1]


def test_cancelling_the_consumer_returns_at_once_while_the_thread_still_blocks():
    release = threading.Event()

    def events() -> Iterator[int]:
        yield 1
        release.wait(10)
        yield 2

    async def run() -> float:
        task = asyncio.create_task(collect(FrameRelay(events(), FRAME, final=Final)))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - started

    try:
        assert asyncio.run(run()) < 0.5
    finally:
        release.set()


def test_the_last_event_goes_out_at_once_not_a_frame_later():
    second_sent = threading.Event()

    def events() -> Iterator[int]:
        yield 1
        assert second_sent.wait(10)
        yield Final(2)

    async def run() -> tuple[list[int], float]:
        received, started = [], time.monotonic()
        async for event in FrameRelay(events(), 30.0, final=Final):  # a 30 s frame
            received.append(event)
            second_sent.set()
        return received, time.monotonic() - started

    received, seconds = asyncio.run(run())
    assert received == [1, 2] and seconds < 10


def test_every_stream_has_a_thread_of_its_own():
    streams = 60  # more than anyio's default pool of 40 threads
    everyone_started = threading.Barrier(streams, timeout=20)

    def events() -> Iterator[int]:
        everyone_started.wait()  # a capped pool would never start them all: BrokenBarrierError
        yield Final(1)

    async def run() -> list[list[int]]:
        return await asyncio.gather(*(collect(FrameRelay(events(), FRAME, final=Final)) for _ in range(streams)))

    assert asyncio.run(run()) == [[1]] * streams


def test_the_events_run_in_the_consumers_context():
    """ZeroGPU's spaces.GPU finds the visitor's request in a context variable: it must reach the events' thread."""
    visitor: contextvars.ContextVar[str] = contextvars.ContextVar("visitor", default="nobody")

    def events() -> Iterator[str]:
        yield visitor.get()

    async def run() -> list[str]:
        visitor.set("hanako")
        return await collect(FrameRelay(events(), FRAME, final=Final))

    assert asyncio.run(run()) == ["hanako"]
