"""Versions of a conversation: Retry and an edit keep the earlier version; the chat continues from the one shown.

The value (kept in a ``gr.State`` beside the chat and saved with the conversation) is JSON::

    {"branches": {pos: {"shown": j, "tails": [tail or None, ...]}}, "made": {pos: {"seeds": [...], "settings": {...}}}}

``pos`` is a message's index (as a string) in the chat as shown. A branch at ``pos`` holds the
conversation's alternative tails from that message on; the shown one is ``None`` (it is the chat itself).
A tail is ``{"messages": [...], "branches": ..., "made": ...}`` with positions counted from its first
message, so a version switched away from keeps its own later versions and records. ``made`` records how
each reply was made: the seed of its generation and of each Continue, and the settings, so it can be
reproduced. Every function returns a new value; none changes its arguments.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jslm_chat.chat.history import ChatInputError, content_text, no_versions

Versions = dict[str, Any]
MAX_VERSIONS_PER_MESSAGE = 30
"""Versions kept of one message; a Retry beyond them lets the oldest go."""
Messages = Sequence[Mapping[str, Any]]


def _plain(messages: Messages) -> list[dict[str, str]]:
    return [{"role": str(message["role"]), "content": content_text(message.get("content"))} for message in messages]


def _split(versions: Versions, at: int) -> tuple[Versions, Versions]:
    """(what stays with the chat before ``at``, what belongs to the tail from ``at`` on, counted from ``at``).

    The branch at ``at`` itself stays: it is the switcher between the tails; the record at ``at`` goes.
    """
    kept, tail = no_versions(), no_versions()
    for kind, first_in_tail in (("branches", at + 1), ("made", at)):
        for pos, value in versions.get(kind, {}).items():
            if int(pos) < first_in_tail:
                kept[kind][pos] = copy.deepcopy(value)
            else:
                tail[kind][str(int(pos) - at)] = copy.deepcopy(value)
    return kept, tail


def _joined(kept: Versions, tail: Versions, at: int) -> Versions:
    joined = copy.deepcopy(kept)
    for kind in ("branches", "made"):
        joined[kind].update({str(int(pos) + at): copy.deepcopy(value) for pos, value in tail[kind].items()})
    return joined


def branched(versions: Versions, history: Messages, at: int) -> Versions:
    """Keep the chat's tail from message ``at`` on as a version; the new, shown one starts empty there.

    An empty tail (a reply stopped before its first word, or cut off by a reload) is not kept: the new one
    takes its place.
    """
    kept, tail = _split(versions, at)
    stashed = {"messages": _plain(history[at:]), **tail}
    if not any(message["content"].strip() for message in stashed["messages"]):
        return kept
    branch = kept["branches"].get(str(at)) or {"shown": 0, "tails": [None]}
    tails = list(branch["tails"])
    tails[branch["shown"]] = stashed
    tails = [*tails[-(MAX_VERSIONS_PER_MESSAGE - 1) :], None]
    kept["branches"][str(at)] = {"shown": len(tails) - 1, "tails": tails}
    return kept


def switched(versions: Versions, history: Messages, at: int, to: int) -> tuple[list[dict[str, str]], Versions]:
    """The chat and versions with version ``to`` (from 0) shown at message ``at``; the shown one is kept.

    Raises :class:`ChatInputError` if there is no such version.
    """
    branch = versions.get("branches", {}).get(str(at))
    if branch is None or not 0 <= to < len(branch["tails"]) or at > len(history):
        raise ChatInputError("その版はありません / There is no such version of this message")
    if to == branch["shown"]:
        return _plain(history), copy.deepcopy(versions)
    kept, tail = _split(versions, at)
    tails = list(branch["tails"])
    tails[branch["shown"]] = {"messages": _plain(history[at:]), **tail}
    chosen, tails[to] = tails[to], None
    kept["branches"][str(at)] = {"shown": to, "tails": tails}
    shown = no_versions() | {kind: chosen.get(kind, {}) for kind in ("branches", "made")}
    return [*_plain(history[:at]), *_plain(chosen["messages"])], _joined(kept, shown, at)


def trimmed(versions: Versions, length: int) -> Versions:
    """The versions of a chat cut to its first ``length`` messages (Undo, a new message after an empty reply)."""
    kept, _ = _split(versions, length)
    kept["branches"].pop(str(length), None)
    return kept


def recorded(versions: Versions, at: int, seed: int, settings: Mapping[str, Any], *, continued: bool) -> Versions:
    """The versions with the reply at ``at`` recorded as made with ``seed`` and ``settings``.

    A Continue adds its seed to the reply's record.
    """
    made = copy.deepcopy(versions)
    made.setdefault("made", {})
    earlier = made["made"].get(str(at)) if continued else None
    seeds = [*earlier["seeds"], seed] if earlier else [seed]
    made["made"][str(at)] = {"seeds": seeds, "settings": {**settings, "seed": seeds[0]}}
    return made


def with_records(versions: Versions, change: Callable[[dict[str, Any]], dict[str, Any]]) -> Versions:
    """The versions with every reply's record, at every depth, replaced by ``change(record)``."""
    branches = {
        pos: {
            "shown": branch["shown"],
            "tails": [None if tail is None else {**tail, **with_records(tail, change)} for tail in branch["tails"]],
        }
        for pos, branch in versions.get("branches", {}).items()
    }
    return {"branches": branches, "made": {pos: change(record) for pos, record in versions.get("made", {}).items()}}


def switchers(versions: Versions) -> list[list[int]]:
    """``[position, shown (from 1), count]`` for each message with more than one version."""
    return sorted(
        [int(pos), branch["shown"] + 1, len(branch["tails"])]
        for pos, branch in versions.get("branches", {}).items()
        if len(branch["tails"]) > 1
    )
