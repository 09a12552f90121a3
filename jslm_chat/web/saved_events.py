"""The side panel's events: conversations saved in this browser (new chat, switch, rename, delete, save).

The browser's stored value (``gr.BrowserState``) comes in with each event and the new value goes
back out; nothing is kept on the server. Every stored value is checked first
(:func:`~jslm_chat.web.saved.restore`); malformed data is dropped with a bilingual warning.
The methods take and return plain values and Gradio updates, so tests drive them directly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import gradio as gr

from jslm_chat.chat.history import ChatInputError
from jslm_chat.chat.service import ChatService, log_user_error
from jslm_chat.web.event_common import History, control_values, sending_allowed, settings_by_name, skipped
from jslm_chat.web.saved import (
    DATE_GROUPS,
    SavedConversation,
    checked_settings,
    date_group,
    open_id,
    renamed,
    restore,
    store_value,
    utc_offset,
    with_saved,
    without,
)
from jslm_chat.web.text import dropped_saved_notice
from jslm_chat.web.versions import Versions, no_versions, switchers


def listings(conversations: Sequence[SavedConversation], current: str | None, offset: int) -> list[gr.Radio]:
    """The side panel's lists, one per date group (:data:`DATE_GROUPS`): titles, newest first, the open
    conversation selected; a group with no conversation is hidden."""
    now = time.time()
    grouped: dict[str, list[tuple[str, str]]] = {group: [] for group in DATE_GROUPS}
    for item in conversations:
        grouped[date_group(item.updated, now, offset)].append((item.title, item.id))
    return [
        gr.Radio(
            choices=choices,
            value=current if any(ident == current for _, ident in choices) else None,
            visible=bool(choices),
        )
        for choices in grouped.values()
    ]


def title_of(conversations: Sequence[SavedConversation], current: str | None) -> str:
    """The open conversation's title ("" for a new chat)."""
    return next((item.title for item in conversations if item.id == current), "")


def panel(conversations: Sequence[SavedConversation], current: str | None, offset: int) -> tuple[Any, ...]:
    """What every side-panel event and every save updates: (stored value, open conversation's id, *lists by date,
    title, rename-and-delete (shown while a conversation is open), delete confirmation (closed), empty-state
    note, the open conversation's versions for the switcher)."""
    opened = next((item for item in conversations if item.id == current), None)
    versions = json.dumps(switchers(opened.versions if opened else no_versions()))
    return (
        store_value(conversations, current, offset),
        current,
        *listings(conversations, current, offset),
        title_of(conversations, current),
        gr.Column(visible=current is not None),
        gr.Column(visible=False),
        gr.Markdown(visible=not conversations),
        versions,
    )


PANEL_OUTPUTS = 2 + len(DATE_GROUPS) + 5


class ConversationHandlers:
    """Saved-conversation events for one chat service; the stored value travels with each event."""

    def __init__(self, service: ChatService, settings_shown: int, emptied: int) -> None:
        """``settings_shown`` and ``emptied`` count the outputs an event leaves alone when it changes nothing."""
        self.service = service
        self.defaults = service.backend.preset.default_settings()
        self.settings_shown = settings_shown
        self.emptied = emptied

    def conversations(self, store: object) -> list[SavedConversation]:
        """The browser's conversations, checked; warns (once per event) about anything dropped."""
        restored = restore(store, self.defaults, self.service.max_new_tokens_limit)
        if restored.dropped:
            notice = dropped_saved_notice(restored.dropped)
            log_user_error(ChatInputError(notice))
            gr.Warning(notice, duration=None)
        return restored.conversations

    def _saved(
        self, store: object, current: str | None, history: History, versions: Versions, values: Sequence[Any]
    ) -> tuple[list[SavedConversation], str | None]:
        conversations = self.conversations(store)
        limit = self.service.max_new_tokens_limit
        settings, _ = checked_settings(settings_by_name(values), self.defaults, limit)
        try:
            return with_saved(conversations, current, history, settings, versions)
        except ChatInputError as error:  # not a conversation the chat could show: keep what was saved
            log_user_error(error)
            return conversations, current

    def load(self, store: object) -> tuple[Any, ...]:
        """On page load: the checked store written back, and the conversation the browser had open.

        Returns (*panel, chat, versions, *controls).
        """
        conversations, offset = self.conversations(store), utc_offset(store)
        opened = next((item for item in conversations if item.id == open_id(store, conversations)), None)
        if opened is None:  # leave the chat and the settings alone: the user may have started already
            return *panel(conversations, None, offset), *skipped(2 + self.settings_shown)
        chat = list(opened.messages), opened.versions
        return *panel(conversations, opened.id, offset), *chat, *control_values(opened.settings)

    def save(
        self, store: object, current: str | None, history: History, versions: Versions, *values: Any
    ) -> tuple[Any, ...]:
        """Save the open conversation, its versions and its settings (a new one gets an id once it has a message).

        Returns the side panel (:func:`panel`).
        """
        return panel(*self._saved(store, current, history, versions, values), utc_offset(store))

    def open(
        self,
        request: gr.Request,
        chosen: str | None,
        store: object,
        current: str | None,
        history: History,
        versions: Versions,
        *values: Any,
    ) -> tuple[Any, ...]:
        """Stop any reply, save the open conversation, and open ``chosen`` with its versions and settings.

        Returns (*panel, chat, versions, status, continue button, generating, send, stop, *controls).
        """
        self.service.stop(request.session_hash)
        conversations, current = self._saved(store, current, history, versions, values)
        target = next((item for item in conversations if item.id == chosen), None)
        if target is None:  # deleted in the meantime (another tab): stay where we are
            return *panel(conversations, current, utc_offset(store)), *skipped(self.emptied + self.settings_shown)
        opened = list(target.messages), target.versions, "", gr.Button(visible=False), *sending_allowed(False)
        return *panel(conversations, target.id, utc_offset(store)), *opened, *control_values(target.settings)

    def new_chat(
        self,
        request: gr.Request,
        store: object,
        current: str | None,
        history: History,
        versions: Versions,
        *values: Any,
    ) -> tuple[Any, ...]:
        """Stop any reply, save the open conversation, and start an empty one (settings kept).

        Returns (*panel, chat, versions, status, continue button, generating, send, stop).
        """
        self.service.stop(request.session_hash)
        conversations, _ = self._saved(store, current, history, versions, values)
        return *panel(conversations, None, utc_offset(store)), *self._emptied()

    def rename(self, store: object, current: str | None, title: str) -> tuple[Any, ...]:
        """Rename the open conversation (an empty title goes back to its first message).

        Returns the side panel (:func:`panel`).
        """
        conversations = self.conversations(store)
        if current is not None:
            conversations = renamed(conversations, current, title or "")
        return panel(conversations, current, utc_offset(store))

    def delete(self, request: gr.Request, store: object, current: str | None) -> tuple[Any, ...]:
        """Stop any reply, delete the open conversation from this browser (once confirmed), start an empty one.

        ``current`` is None when nothing is open: then nothing changes.
        Returns (*panel, chat, versions, status, continue button, generating, send, stop).
        """
        if current is None:
            return skipped(PANEL_OUTPUTS + self.emptied)
        self.service.stop(request.session_hash)
        return *panel(without(self.conversations(store), current), None, utc_offset(store)), *self._emptied()

    def _emptied(self) -> tuple[Any, ...]:
        return [], no_versions(), "", gr.Button(visible=False), *sending_allowed(False)
