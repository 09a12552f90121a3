"""Generation slots and a bounded waiting line, shared fairly between clients.

Gradio's own queue answers a full line with a fixed English text that neither its browser nor
its Python client lets an app replace. We admit generations ourselves instead: ``slots``
replies run at once, up to ``max_waiting`` requests wait (the UI shows their place in line), and
any more are refused at once with a bilingual "busy" message.

Each request may name its client (an address). One client holds at most ``client_share`` places,
running and waiting together; more from it are refused while others still get in. The line is
served in rounds: a request's round is how many places its client already held when it joined,
and the line is ordered by round, then by arrival. So a newcomer waits behind at most one request
of each client ahead of it, however many that client sent. A request without a client is its own.
"""

from __future__ import annotations

import bisect
import itertools
import threading
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


class ClientShareError(BusyError):
    """This client already holds its share of the slots and the line."""

    def __init__(self, share: int) -> None:
        UserError.__init__(
            self,
            f"同時に送れるリクエストは {share} 件までです。返答が終わるか止めてから、もう一度お試しください。"
            f" / You already have {share} requests running or waiting: wait for one to end (or stop it),"
            " then try again.",
        )


class Ticket:
    """One request's place: waiting in line, then holding a slot until it leaves."""

    def __init__(self, admission: Admission, client: object, order: tuple[int, int]) -> None:
        self._admission = admission
        self.client = client
        self.order = order  # (round, arrival): the line's sort key
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


def default_client_share(slots: int, max_waiting: int) -> int:
    """Places one client may hold: a quarter of all places, at least 2."""
    return max(2, (slots + max_waiting) // 4)


class Admission:
    """``slots`` generations at once, at most ``max_waiting`` more waiting, ``client_share`` per client."""

    def __init__(self, slots: int, max_waiting: int, client_share: int | None = None) -> None:
        if slots < 1 or max_waiting < 0 or (client_share is not None and client_share < 1):
            raise ValueError("slots and client_share must be at least 1 and max_waiting at least 0")
        self.slots = slots
        self.max_waiting = max_waiting
        self.client_share = client_share or default_client_share(slots, max_waiting)
        self._condition = threading.Condition()
        self._running: set[Ticket] = set()
        self._line: list[Ticket] = []  # sorted by Ticket.order
        self._held: dict[object, int] = {}  # places (running or waiting) per client
        self._arrivals = itertools.count()

    def join(self, client: str | None = None) -> Ticket:
        """A ticket, admitted at once if a slot is free; raises :class:`BusyError` if the line is full,
        :class:`ClientShareError` if ``client`` already holds its share."""
        with self._condition:
            arrival = next(self._arrivals)
            key: object = client if client is not None else ("anonymous", arrival)
            held = self._held.get(key, 0)
            free = len(self._running) < self.slots and not self._line
            if not free and len(self._line) >= self.max_waiting:
                raise BusyError()
            if held >= self.client_share:
                raise ClientShareError(self.client_share)
            ticket = Ticket(self, key, (held, arrival))
            if free:
                self._admit(ticket)
            else:
                bisect.insort(self._line, ticket, key=lambda item: item.order)
            self._held[key] = held + 1
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
            if ticket.left:
                return
            ticket.left = True
            if ticket in self._running:
                self._running.discard(ticket)
            elif ticket in self._line:
                self._line.remove(ticket)
            held = self._held.pop(ticket.client, 0) - 1
            if held > 0:
                self._held[ticket.client] = held
            while self._line and len(self._running) < self.slots:
                self._admit(self._line.pop(0))
            self._condition.notify_all()
