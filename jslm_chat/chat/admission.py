"""Generation slots and a bounded, first-come-first-served waiting line.

Gradio's own queue answers a full line with a fixed English text that neither its browser nor
its Python client lets an app replace. We admit generations ourselves instead: ``slots``
replies run at once, up to ``max_waiting`` requests wait in order (the UI shows their place in
line), and any more are refused at once with a bilingual "busy" message.
"""

from __future__ import annotations

import threading
from collections import deque
from types import TracebackType

from jslm_chat.model.errors import UserError

BUSY_MESSAGE = (
    "ただいま混雑しています。しばらくしてからもう一度お試しください。"
    " / The server is busy: please try again in a moment."
)


class BusyError(UserError, RuntimeError):
    """Every slot is taken and the waiting line is full."""

    def __init__(self) -> None:
        super().__init__(BUSY_MESSAGE)


class Ticket:
    """One request's place: waiting in line, then holding a slot until it leaves."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self.admitted = False
        self.left = False

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a slot or for leaving; whether either happened."""
        return self._admission._wait(self, timeout)

    @property
    def ahead(self) -> int:
        """How many requests are before this one in line (0 once admitted)."""
        return self._admission._ahead(self)

    def leave(self) -> None:
        """Give the slot (or the place in line) to the next request. Safe to call twice."""
        self._admission._leave(self)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.leave()


class Admission:
    """``slots`` generations at once, at most ``max_waiting`` more waiting in line."""

    def __init__(self, slots: int, max_waiting: int) -> None:
        if slots < 1 or max_waiting < 0:
            raise ValueError("slots must be at least 1 and max_waiting at least 0")
        self.slots = slots
        self.max_waiting = max_waiting
        self._condition = threading.Condition()
        self._running: set[Ticket] = set()
        self._line: deque[Ticket] = deque()

    def join(self) -> Ticket:
        """A ticket, admitted at once if a slot is free; raises :class:`BusyError` if the line is full."""
        with self._condition:
            ticket = Ticket(self)
            if len(self._running) < self.slots and not self._line:
                self._admit(ticket)
            elif len(self._line) < self.max_waiting:
                self._line.append(ticket)
            else:
                raise BusyError()
            return ticket

    @property
    def running(self) -> int:
        """Requests holding a slot."""
        with self._condition:
            return len(self._running)

    @property
    def waiting(self) -> int:
        """Requests waiting in line."""
        with self._condition:
            return len(self._line)

    def _admit(self, ticket: Ticket) -> None:
        ticket.admitted = not ticket.left
        self._running.add(ticket)

    def _wait(self, ticket: Ticket, timeout: float) -> bool:
        with self._condition:
            return self._condition.wait_for(lambda: ticket.admitted or ticket.left, timeout)

    def _ahead(self, ticket: Ticket) -> int:
        with self._condition:
            return self._line.index(ticket) if ticket in self._line else 0

    def _leave(self, ticket: Ticket) -> None:
        with self._condition:
            ticket.left = True
            if ticket in self._running:
                self._running.discard(ticket)
            elif ticket in self._line:
                self._line.remove(ticket)
            while self._line and len(self._running) < self.slots:
                self._admit(self._line.popleft())
            self._condition.notify_all()
