"""Stop strings: a reply ends just before the first of them, and no part of one is ever shown.

Pure text functions, used by :class:`~jslm_chat.model.backend.ReplyStream` for every backend: the
reply's text is searched as it grows (:func:`find_stop`), and while its end could still be the
start of a stop string that end is held back (:func:`shown_length`), so a stop string split across
streamed pieces never appears, not even in part.
"""

from __future__ import annotations

from collections.abc import Sequence


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int:
    """Where the first stop string begins in ``text`` (searching from ``start``); -1 if none does."""
    found = [index for stop in stops if (index := text.find(stop, start)) >= 0]
    return min(found, default=-1)


def search_start(length_before: int, stops: Sequence[str]) -> int:
    """Where to search text that grew from ``length_before`` characters: a stop string may straddle the old end."""
    longest = max((len(stop) for stop in stops), default=1)
    return max(0, length_before - longest + 1)


def shown_length(text: str, stops: Sequence[str]) -> int:
    """How much of ``text`` may be shown: all of it but a tail that begins some stop string."""
    held = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:size]):
                held = size
                break
    return len(text) - held
