"""Which replies each session really received: a vote must refer to one of them.

Bounded: the last :data:`REPLIES_PER_SESSION` replies of the :data:`MAX_SESSIONS` most recently
active sessions, kept as digests (never the text). A reply is compared as a chat display shows it:
Gradio's Chatbot passes text through ``inspect.cleandoc`` (leading and trailing blank lines and the
first line's indentation go), so the browser sends back a reply that began with a space or ended
with a newline without them.
"""

from __future__ import annotations

import hashlib
import inspect
import threading
from collections import OrderedDict, deque

MAX_SESSIONS = 2_000
REPLIES_PER_SESSION = 50


def _digest(text: str) -> bytes:
    shown = inspect.cleandoc(text)
    return hashlib.blake2b(shown.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class Receipts:
    """Digests of the replies delivered to each session."""

    def __init__(self, max_sessions: int = MAX_SESSIONS, per_session: int = REPLIES_PER_SESSION) -> None:
        self.max_sessions = max_sessions
        self.per_session = per_session
        self._sessions: OrderedDict[str, deque[bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, session: str, reply: str) -> None:
        """Note that ``session`` received ``reply`` (its full text)."""
        with self._lock:
            replies = self._sessions.pop(session, None) or deque(maxlen=self.per_session)
            replies.append(_digest(reply))
            self._sessions[session] = replies
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)

    def received(self, session: str, reply: str) -> bool:
        """Whether ``session`` received ``reply`` (recently)."""
        with self._lock:
            return _digest(reply) in self._sessions.get(session, ())
