"""👍 / 👎 votes on replies, appended as JSON lines to ``feedback.jsonl`` in ``--feedback-dir``.

Each line holds the time, the vote, an optional comment, the conversation up to the rated reply,
the model and the settings; never an IP address or a session id. Appends are serialised by a
lock in this process and an exclusive file lock across processes, so lines never interleave.

Bounded: at most :data:`VOTES_PER_MINUTE` votes a minute from one client, and once the file would
pass :data:`MAX_FILE_BYTES` it becomes ``feedback.1.jsonl`` (replacing the previous one) and a
new file starts: at most twice that on disk.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jslm_chat import file_lock
from jslm_chat.model.errors import UserError
from jslm_chat.web.export import conversation_messages
from jslm_chat.web.rate import WindowCounter

FILE_NAME = "feedback.jsonl"
OLD_FILE_NAME = "feedback.1.jsonl"
MAX_FILE_BYTES = 50 * 1024 * 1024
VOTES_PER_MINUTE = 20


class VoteRefusedError(UserError, ValueError):
    """The vote is not recorded (too many from this client, or not about a reply it received)."""


TOO_MANY_VOTES = (
    f"評価が多すぎます（1 分に {VOTES_PER_MINUTE} 件まで）。少し待ってからお試しください。"
    f" / Too many votes: at most {VOTES_PER_MINUTE} a minute."
)


class FeedbackLog:
    """Appends votes to ``directory/feedback.jsonl``."""

    def __init__(self, directory: str | Path, max_bytes: int = MAX_FILE_BYTES) -> None:
        self.path = Path(directory).expanduser() / FILE_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._votes = WindowCounter(60.0)
        self._lock = threading.Lock()

    def record(
        self,
        *,
        conversation: Sequence[Mapping[str, Any]],
        liked: bool | str,
        comment: str,
        metadata: Mapping[str, Any],
        client: str | None = None,
    ) -> None:
        """Append one vote; raises :class:`VoteRefusedError` past ``client``'s rate."""
        if client is not None and self._votes.count(client) >= VOTES_PER_MINUTE:
            raise VoteRefusedError(TOO_MANY_VOTES)
        if client is not None:
            self._votes.add(client)
        entry = {
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "vote": "like" if liked is True else "dislike" if liked is False else str(liked),
            "comment": (comment or "").strip(),
            "messages": conversation_messages(conversation),
            "metadata": dict(metadata),
        }
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8", "replace")
        with self._lock, self.path.open("ab") as file, file_lock.exclusive(file):
            size = file.seek(0, 2)
            if size and size + len(line) > self.max_bytes:
                self.path.replace(self.path.with_name(OLD_FILE_NAME))  # this handle now writes the old file
                with self.path.open("ab") as fresh:
                    fresh.write(line)
                return
            file.write(line)
            file.flush()
