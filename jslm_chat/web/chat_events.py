"""What the browser UI's events do: send, stream, stop, retry, continue, edit, undo, export, vote.

:class:`ChatHandlers` holds no Gradio layout: ``ui.py`` wires its methods to components, and the
tests drive them directly. Every reply goes through :class:`~jslm_chat.chat.service.ChatService`.
Settings arrive as the values of the controls in :data:`~jslm_chat.model.params.SHOWN_SETTINGS` order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import gradio as gr

from jslm_chat.chat.history import content_text
from jslm_chat.chat.service import ChatService, Done, InLine, log_user_error, stream_events
from jslm_chat.model.errors import UserError
from jslm_chat.model.params import SHOWN_SETTINGS, checked_text
from jslm_chat.web.client_address import client_of
from jslm_chat.web.export import to_json, to_markdown
from jslm_chat.web.feedback import FeedbackLog, VoteRefusedError
from jslm_chat.web.text import (
    NOTHING_TO_CONTINUE,
    NOTHING_TO_RETRY,
    NOTHING_TO_SEND,
    STARTING,
    dropped_notice,
    status_line,
    waiting_line,
)

Message = dict[str, Any]
History = list[Message]
MAX_COMMENT_CHARS = 2_000
NOT_A_REPLY = "評価できるのは、この画面で受け取った返答だけです。 / You can only rate a reply this page received."


def nothing_to_do(message: str) -> gr.Error:
    """A silent error: it only stops the event chain (``.success`` steps do not run)."""
    return gr.Error(message, visible=False, print_exception=False)


def sending_allowed(generating: bool) -> tuple[bool, gr.Button]:
    """The ``generating`` flag, and the Send button disabled while a reply is on its way."""
    return generating, gr.Button(interactive=not generating)


def settings_by_name(values: Sequence[object]) -> dict[str, object]:
    """The controls' values (in :data:`SHOWN_SETTINGS` order) by setting name."""
    return {spec.name: value for spec, value in zip(SHOWN_SETTINGS, values, strict=True)}


def control_values(settings: Mapping[str, Any]) -> tuple[Any, ...]:
    """The controls' values for ``settings`` (by name); an empty seed box means random."""
    return tuple("" if settings[spec.name] is None else settings[spec.name] for spec in SHOWN_SETTINGS)


def _trim_to_last_user_message(history: Sequence[Message]) -> History:
    trimmed = list(history)
    while trimmed and trimmed[-1].get("role") != "user":
        trimmed.pop()
    return trimmed


def checked_vote(
    service: ChatService,
    session: str | None,
    like: gr.LikeData,
    history: object,
    comment: object,
    values: Sequence[Any],
) -> History:
    """The conversation up to the rated reply, if the vote is sound; else a bilingual :class:`VoteRefusedError`."""
    checked_text("comment", comment, MAX_COMMENT_CHARS, VoteRefusedError)
    service.request("-", history, settings_by_name(values))  # the history's and settings' limits, as /chat
    index = like.index[0] if isinstance(like.index, (list, tuple)) and like.index else like.index
    messages = history if isinstance(history, list) else []
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(messages):
        raise VoteRefusedError(NOT_A_REPLY)
    rated = messages[index]
    received = service.receipts.received(session or "", content_text(rated.get("content")))
    if rated.get("role") != "assistant" or not received:
        raise VoteRefusedError(NOT_A_REPLY)
    return messages[: index + 1]


class ChatHandlers:
    """The UI's event handlers for one chat service (shared by every browser session)."""

    def __init__(self, service: ChatService, feedback: FeedbackLog | None = None) -> None:
        self.service = service
        self.feedback = feedback

    def default_settings(self) -> tuple[Any, ...]:
        """Every control's starting value (the reset button)."""
        return control_values(self.service.backend.preset.default_settings())

    def submit(self, message: str, history: History, generating: bool) -> tuple[Any, ...]:
        """Move a non-empty message from the textbox into the chat (the reply follows)."""
        if generating or not (message or "").strip():
            raise nothing_to_do(NOTHING_TO_SEND)
        return "", [*history, {"role": "user", "content": message}], *sending_allowed(True)

    async def respond(self, request: gr.Request, history: History, *values: Any) -> AsyncIterator[tuple[Any, ...]]:
        """Stream the reply to the pending last user message into the chat and the status line."""
        if not history or history[-1].get("role") != "user":
            return
        message = content_text(history[-1].get("content"))
        async for update in self._stream(history[:-1], message, values, request, continue_reply=False):
            yield update

    async def continue_reply(
        self, request: gr.Request, history: History, *values: Any
    ) -> AsyncIterator[tuple[Any, ...]]:
        """Extend the last reply, which was cut off at max_new_tokens, in the same bubble."""
        if not history or history[-1].get("role") != "assistant":
            return
        async for update in self._stream(history, "", values, request, continue_reply=True):
            yield update

    async def _stream(
        self, past: History, message: str, values: Sequence[Any], request: gr.Request, *, continue_reply: bool
    ) -> AsyncIterator[tuple[Any, ...]]:
        """Yields (chat, textbox, status, continue button) updates."""
        service, session = self.service, request.session_hash
        shown = past if continue_reply else [*past, {"role": "user", "content": message}]
        before = _trim_to_last_user_message(past) if continue_reply else shown
        try:
            chat_request = service.request(message, past, settings_by_name(values), continue_reply=continue_reply)
            job = service.start(chat_request, session, client=client_of(request))
            if job.reply.prompt.dropped_turns:
                gr.Info(dropped_notice(job.reply.prompt.dropped_turns))
            yield gr.skip(), gr.skip(), STARTING, gr.Button(visible=False)
            async for event in stream_events(service, job, session):
                if isinstance(event, InLine):
                    yield gr.skip(), gr.skip(), waiting_line(event.ahead), gr.skip()
                    continue
                shown = [*before, {"role": "assistant", "content": event.text}]
                done = isinstance(event, Done)
                reason = event.finish_reason if isinstance(event, Done) else None
                status = status_line(event.reply, service.backend.context_length, reason)
                yield shown, gr.skip(), status, gr.Button(visible=done and reason == "length")
        except UserError as error:
            log_user_error(error)
            gr.Warning(str(error), duration=None)
            # Nothing typed is lost: a new message goes back into the textbox.
            yield shown if continue_reply else past, gr.skip() if continue_reply else message, f"⚠️ {error}", gr.skip()

    def stop(self, request: gr.Request) -> None:
        """Stop this browser session's reply (in line, preparing or streaming)."""
        self.service.stop(request.session_hash)

    def finish(self) -> tuple[Any, ...]:
        """After a reply (finished, failed, stopped or undone): allow sending again."""
        return sending_allowed(False)

    def retry(self, history: History, generating: bool) -> tuple[Any, ...]:
        """Drop the last reply so that the last user message is answered again."""
        trimmed = _trim_to_last_user_message(history)
        if generating or not trimmed:
            raise nothing_to_do(NOTHING_TO_RETRY)
        return trimmed, *sending_allowed(True)

    def start_continue(self, history: History, generating: bool) -> tuple[Any, ...]:
        """Check that there is a reply to continue, and mark the chat as generating."""
        if generating or not history or history[-1].get("role") != "assistant":
            raise nothing_to_do(NOTHING_TO_CONTINUE)
        return sending_allowed(True)

    def edit(self, request: gr.Request, edit: gr.EditData, history: History) -> tuple[Any, ...]:
        """An edited user message replaces everything after it; its new reply follows."""
        self.service.stop(request.session_hash)
        index = edit.index[0] if isinstance(edit.index, (list, tuple)) and edit.index else edit.index
        if not isinstance(index, int) or not 0 <= index < len(history) or history[index].get("role") != "user":
            raise nothing_to_do(NOTHING_TO_SEND)
        kept = [*history[:index], {"role": "user", "content": content_text(edit.value)}]
        return kept, *sending_allowed(True)

    def undo(self, request: gr.Request, history: History) -> tuple[Any, ...]:
        """Stop any reply, remove the last turn and put its message back into the textbox."""
        self.service.stop(request.session_hash)
        trimmed = _trim_to_last_user_message(history)
        if not trimmed:
            return [], gr.skip()
        last = trimmed.pop()
        return trimmed, content_text(last.get("content"))

    def export_metadata(self, values: Sequence[Any]) -> dict[str, Any]:
        """The model, where it runs, and the settings: what a saved conversation carries."""
        backend = self.service.backend
        return {"model": backend.preset.public_id, "runs_on": backend.runs_on, **settings_by_name(values)}

    def export_json(self, history: History, *values: Any) -> str:
        """The conversation as JSON text (downloaded by the browser; nothing is written on the server)."""
        return to_json(history, self.export_metadata(values))

    def export_markdown(self, history: History, *values: Any) -> str:
        """The conversation as Markdown text (downloaded by the browser)."""
        return to_markdown(history, self.export_metadata(values))

    def vote(self, request: gr.Request, like: gr.LikeData, history: History, comment: str, *values: Any) -> str:
        """Record a 👍/👎 on a reply this session received (with the optional comment); clears the comment box.

        Everything is checked as ``/chat`` checks it; a refused vote is one log line and a warning.
        """
        if self.feedback is None:
            return comment
        try:
            rated = checked_vote(self.service, request.session_hash, like, history, comment, values)
            self.feedback.record(
                conversation=rated,
                liked=like.liked is True,
                comment=comment,
                metadata=self.export_metadata(values),
                client=client_of(request),
            )
        except UserError as error:
            log_user_error(error)
            gr.Warning(str(error))
            return comment
        return ""
