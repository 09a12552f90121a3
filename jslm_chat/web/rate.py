"""Events per key (a client address) within a sliding time window, for a bounded number of keys."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque

MAX_KEYS = 10_000
"""Keys remembered at most (the least recently seen is forgotten first): memory stays bounded."""


class WindowCounter:
    """Counts events per key over the last ``seconds`` seconds."""

    def __init__(self, seconds: float, max_keys: int = MAX_KEYS) -> None:
        self.seconds = seconds
        self.max_keys = max_keys
        self._events: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def count(self, key: str) -> int:
        """Events for ``key`` within the window."""
        with self._lock:
            return len(self._recent(key, time.monotonic()))

    def add(self, key: str) -> int:
        """Record one event for ``key``; the count within the window, this one included."""
        now = time.monotonic()
        with self._lock:
            events = self._recent(key, now)
            events.append(now)
            self._events[key] = events
            self._events.move_to_end(key)
            while len(self._events) > self.max_keys:
                self._events.popitem(last=False)
            return len(events)

    def clear(self, key: str) -> None:
        """Forget ``key``'s events."""
        with self._lock:
            self._events.pop(key, None)

    def retry_after(self, key: str) -> float:
        """Seconds until ``key``'s oldest event in the window leaves it (0 with none)."""
        now = time.monotonic()
        with self._lock:
            events = self._recent(key, now)
            return max(0.0, events[0] + self.seconds - now) if events else 0.0

    def _recent(self, key: str, now: float) -> deque[float]:
        events = self._events.get(key, deque())
        while events and events[0] <= now - self.seconds:
            events.popleft()
        return events
