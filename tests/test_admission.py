"""Generation slots and the bounded first-come-first-served line."""

from __future__ import annotations

import threading

import pytest

from jslm_chat.chat.admission import Admission, BusyError


def test_free_slots_admit_at_once_and_a_full_line_is_refused():
    admission = Admission(slots=2, max_waiting=1)
    first, second = admission.join(), admission.join()
    assert first.admitted and second.admitted
    third = admission.join()
    assert not third.admitted and third.ahead == 0
    with pytest.raises(BusyError, match="混雑") as caught:
        admission.join()
    assert "busy" in str(caught.value)
    assert (admission.running, admission.waiting) == (2, 1)


def test_leaving_admits_the_next_in_order():
    admission = Admission(slots=1, max_waiting=3)
    running = admission.join()
    line = [admission.join() for _ in range(3)]
    assert [ticket.ahead for ticket in line] == [0, 1, 2]
    assert not line[0].wait(0.01)
    running.leave()
    assert line[0].wait(0.01) and not line[1].admitted
    line[1].leave()  # gives up its place in line
    assert line[2].ahead == 0
    line[0].leave()
    assert line[2].admitted
    line[2].leave()
    line[2].leave()  # twice is harmless
    assert (admission.running, admission.waiting) == (0, 0)


def test_a_waiting_thread_wakes_when_a_slot_frees():
    admission = Admission(slots=1, max_waiting=1)
    holder = admission.join()
    waiter = admission.join()
    woke = threading.Event()
    thread = threading.Thread(target=lambda: waiter.wait(5) and woke.set())
    thread.start()
    with holder:
        pass
    thread.join(5)
    assert woke.is_set()
    assert admission.running == 1


def test_no_line_means_busy_as_soon_as_the_slots_are_taken():
    admission = Admission(slots=1, max_waiting=0)
    with admission.join(), pytest.raises(BusyError):
        admission.join()
    assert admission.join().admitted


def test_nonsense_sizes_are_rejected():
    with pytest.raises(ValueError):
        Admission(slots=0, max_waiting=1)


def test_one_client_holds_at_most_its_share_and_the_line_is_served_in_rounds():
    admission = Admission(slots=1, max_waiting=8, client_share=3)
    hog = [admission.join("hog") for _ in range(3)]
    with pytest.raises(BusyError, match="3 requests"):
        admission.join("hog")
    polite = admission.join("polite")
    assert polite.ahead == 0  # before the hog's second and third requests
    assert [ticket.ahead for ticket in hog[1:]] == [1, 2]
    hog[0].leave()
    assert polite.admitted and not hog[1].admitted
    assert admission.join("hog").ahead == 2  # its share freed one place, behind its own earlier ones
    for ticket in [*hog, polite]:
        ticket.leave()


def test_requests_without_a_client_are_each_their_own():
    admission = Admission(slots=1, max_waiting=4, client_share=2)
    tickets = [admission.join() for _ in range(5)]
    assert (admission.running, admission.waiting) == (1, 4)
    for ticket in tickets:
        ticket.leave()
