"""What the event modules share: the chat's value types, the controls' values, and the sending state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gradio as gr

from jslm_chat.model.params import SHOWN_SETTINGS
from jslm_chat.web.text import language_of

Message = dict[str, Any]
History = list[Message]


def sending_allowed(generating: bool) -> tuple[Any, ...]:
    """The ``generating`` flag, Send, and Stop in Send's place while a reply is on its way."""
    return generating, gr.Button(visible=not generating), gr.Button(visible=generating)


SENDING_OUTPUTS = len(sending_allowed(False))


def settings_by_name(values: Sequence[object]) -> dict[str, object]:
    """The controls' values (in :data:`SHOWN_SETTINGS` order) by setting name."""
    return {spec.name: value for spec, value in zip(SHOWN_SETTINGS, values, strict=True)}


def control_values(settings: Mapping[str, Any]) -> tuple[Any, ...]:
    """The controls' values for ``settings`` (by name); an empty seed box means random."""
    return tuple("" if settings[spec.name] is None else settings[spec.name] for spec in SHOWN_SETTINGS)


def skipped(count: int) -> tuple[Any, ...]:
    """``count`` outputs left as they are."""
    return (gr.skip(),) * count


def language(request: gr.Request | None) -> str:
    """The visitor's language ("ja" or "en"), from the browser's ``Accept-Language``."""
    headers = getattr(request, "headers", None) or {}
    return language_of(headers.get("accept-language"))
