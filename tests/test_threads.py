"""Long-lived daemon threads: work after work in the same thread, a new one only when all are busy."""

from __future__ import annotations

import threading

from jslm_chat.backends.inprocess.threads import LongLivedThreads


def test_work_one_after_another_runs_in_one_thread_that_lives_on():
    threads = LongLivedThreads("test-serial")
    ran_in = []
    for _ in range(5):
        wait = threads.submit(lambda: ran_in.append(threading.current_thread()))
        assert wait(5)
    assert len(set(ran_in)) == 1
    assert ran_in[0].is_alive() and ran_in[0].daemon


def test_work_at_the_same_time_gets_a_thread_each_and_they_are_reused():
    threads = LongLivedThreads("test-parallel")
    release = threading.Event()
    ran_in: list[threading.Thread] = []
    lock = threading.Lock()

    def blocked() -> None:
        with lock:
            ran_in.append(threading.current_thread())
        release.wait(5)

    waits = [threads.submit(blocked) for _ in range(3)]
    assert not waits[0](0.2)  # all three are running, none has returned
    release.set()
    assert all(wait(5) for wait in waits)
    assert len(set(ran_in)) == 3
    again = [threads.submit(blocked) for _ in range(3)]
    assert all(wait(5) for wait in again)
    assert len(set(ran_in)) == 3  # the same three threads, nothing new
    assert sum(thread.name.startswith("test-parallel") for thread in threading.enumerate()) == 3


def test_a_failing_piece_of_work_still_returns_and_the_thread_serves_on():
    threads = LongLivedThreads("test-failing")

    def fail() -> None:
        raise RuntimeError("boom")

    assert threads.submit(fail)(5)
    assert threads.submit(lambda: None)(5)
    assert sum(thread.name.startswith("test-failing") for thread in threading.enumerate()) == 1
