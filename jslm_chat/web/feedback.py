"""👍 / 👎 votes on replies, appended as JSON lines to ``feedback.jsonl`` in ``--feedback-dir``.

Each line holds the time, the vote, an optional comment, the conversation up to the rated reply,
the model and the settings; never an IP address or a session id. Appends are serialised by a
lock in this process and an exclusive file lock across processes, so lines never interleave.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jslm_chat import file_lock
from jslm_chat.web.export import conversation_messages

FILE_NAME = "feedback.jsonl"


class FeedbackLog:
    """Appends votes to ``directory/feedback.jsonl``."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory).expanduser() / FILE_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def record(
        self, *, conversation: Sequence[Mapping[str, Any]], liked: bool | str, comment: str, metadata: Mapping[str, Any]
    ) -> None:
        """Append one vote."""
        entry = {
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "vote": "like" if liked is True else "dislike" if liked is False else str(liked),
            "comment": (comment or "").strip(),
            "messages": conversation_messages(conversation),
            "metadata": dict(metadata),
        }
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as file, file_lock.exclusive(file):
            file.write(line)
            file.flush()
