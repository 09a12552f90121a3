"""What the browser UI's events do: send, stream, stop, retry, continue, edit, undo, versions, export, vote.

:class:`ChatHandlers` holds no Gradio layout: ``ui.py`` wires its methods to components, and the
tests drive them directly. Every reply goes through :class:`~jslm_chat.chat.service.ChatService`.
Settings arrive as the values of the controls in :data:`~jslm_chat.model.params.SHOWN_SETTINGS` order; the
chat's versions (:mod:`jslm_chat.web.versions`) travel beside the chat.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import gradio as gr

from jslm_chat.chat.history import ChatInputError, checked_versions, content_text
from jslm_chat.chat.service import MAX_MESSAGE_CHARS, ChatService, Done, InLine, log_user_error, stream_events
from jslm_chat.model.errors import UserError
from jslm_chat.model.params import checked_text
from jslm_chat.web.client_address import client_of
from jslm_chat.web.event_common import (
    SENDING_OUTPUTS,
    History,
    Message,
    control_values,
    language,
    sending_allowed,
    settings_by_name,
    skipped,
)
from jslm_chat.web.export import to_json, to_markdown
from jslm_chat.web.feedback import FeedbackLog, VoteRefusedError
from jslm_chat.web.text import (
    NOTHING_TO_SEND,
    STARTING,
    VOTE_RECORDED,
    dropped_notice,
    status_line,
    waiting_line,
)
from jslm_chat.web.versions import Versions, branched, recorded, switched, trimmed

MAX_COMMENT_CHARS = 2_000
NOT_A_REPLY = "評価できるのは、この画面で受け取った返答だけです。 / You can only rate a reply this page received."
STREAMED_OUTPUTS = 5
"""What a reply event updates: the chat, the textbox, the status line, Continue and the versions."""
Pending = dict[str, Any] | None
"""What a reply event is to answer: ``{"before": history, "versions": versions, "back": bool}`` (the chat and
its versions to go back to, and whether the message goes back into the textbox, if the reply is refused), or
None for nothing. Refused events set None instead of raising, so no error badge covers the chat."""


def pending(before: History, versions: Versions, *, back: bool) -> dict[str, Any]:
    """A reply to make; ``before`` and ``versions`` are restored if it is refused."""
    return {"before": list(before), "versions": versions, "back": back}


def _trim_to_last_user_message(history: Sequence[Message]) -> History:
    trimmed = list(history)
    while trimmed and trimmed[-1].get("role") != "user":
        trimmed.pop()
    return trimmed


def _index(data: gr.EditData | gr.LikeData) -> object:
    """The event's message index (a number for a chat message; anything else is refused by the caller)."""
    return data.index[0] if isinstance(data.index, (list, tuple)) and data.index else data.index


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
    index = _index(like)
    messages = history if isinstance(history, list) else []
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(messages):
        raise VoteRefusedError(NOT_A_REPLY)
    rated = messages[index]
    received = service.receipts.received(session or "", content_text(rated.get("content")))
    if rated.get("role") != "assistant" or not received:
        raise VoteRefusedError(NOT_A_REPLY)
    return messages[: index + 1]


def kept_version(versions: Versions, history: History, at: int) -> Versions:
    """The versions with the chat's tail from ``at`` on kept as an earlier version, within the bounds of saved
    versions (``checked_versions``); past them, the tail is let go (one log line): what a browser session keeps
    in the server's memory is bounded as what it saves."""
    kept = branched(versions, history, at)
    try:
        checked_versions(kept, at + 1)
    except ChatInputError as error:
        log_user_error(error)
        return branched(versions, history[:at], at)
    return kept


def made_with(params: object, values: Sequence[Any]) -> dict[str, Any]:
    """The settings a reply is made with: the checked parameters, by the controls' names."""
    return {name: getattr(params, name, value) for name, value in settings_by_name(values).items()}


class ChatHandlers:
    """The UI's event handlers for one chat service (shared by every browser session)."""

    def __init__(self, service: ChatService, feedback: FeedbackLog | None = None) -> None:
        self.service = service
        self.feedback = feedback

    def default_settings(self) -> tuple[Any, ...]:
        """Every control's starting value (the reset button)."""
        return control_values(self.service.backend.preset.default_settings())

    def submit(self, message: str, history: History, versions: Versions, generating: bool) -> tuple[Any, ...]:
        """Move a non-empty message from the textbox into the chat (the reply follows).

        Returns (textbox, chat, generating, send, stop, pending); a blank message changes nothing.
        """
        if generating or not (message or "").strip():
            return *skipped(2 + SENDING_OUTPUTS), None
        before = list(history)
        asked = [*before, {"role": "user", "content": message}]
        return "", asked, *sending_allowed(True), pending(before, versions, back=True)

    def submit_example(
        self, example: gr.SelectData, history: History, versions: Versions, generating: bool
    ) -> tuple[Any, ...]:
        """A suggestion card in the empty chat, clicked: its text is sent as a message (as :meth:`submit`)."""
        value = example.value if isinstance(example.value, dict) else {}
        text = value.get("text")
        return self.submit(text if isinstance(text, str) else "", history, versions, generating)

    async def respond(
        self, request: gr.Request, history: History, versions: Versions, todo: Pending, *values: Any
    ) -> AsyncIterator[tuple[Any, ...]]:
        """Stream the reply to the pending last user message into the chat and the status line."""
        if todo is None or not history or history[-1].get("role") != "user":
            yield skipped(STREAMED_OUTPUTS)  # Gradio empties every output of a generator that yields nothing
            return
        message = content_text(history[-1].get("content"))
        made = (history[:-1], message, versions, values)
        async for update in self._stream(made, request, todo, continue_reply=False):
            yield update

    async def continue_reply(
        self, request: gr.Request, history: History, versions: Versions, todo: Pending, *values: Any
    ) -> AsyncIterator[tuple[Any, ...]]:
        """Extend the last reply, which was cut off at max_new_tokens, in the same bubble."""
        if todo is None or not history or history[-1].get("role") != "assistant":
            yield skipped(STREAMED_OUTPUTS)
            return
        async for update in self._stream((history, "", versions, values), request, todo, continue_reply=True):
            yield update

    async def _stream(
        self,
        made: tuple[History, str, Versions, Sequence[Any]],
        request: gr.Request,
        todo: dict[str, Any],
        *,
        continue_reply: bool,
    ) -> AsyncIterator[tuple[Any, ...]]:
        """Streams the reply to ``made`` (past, message, versions, settings' values).

        Yields (chat, textbox, status, continue button, versions) updates; the finished reply is recorded
        in the versions with its seed and settings.
        """
        past, message, versions, values = made
        service, session, lang = self.service, request.session_hash, language(request)
        shown = past if continue_reply else [*past, {"role": "user", "content": message}]
        before = _trim_to_last_user_message(past) if continue_reply else shown
        try:
            chat_request = service.request(message, past, settings_by_name(values), continue_reply=continue_reply)
            job = service.start(chat_request, session, client=client_of(request))
            if job.reply.prompt.dropped_turns:
                gr.Info(dropped_notice(job.reply.prompt.dropped_turns))
            settings = made_with(chat_request.params, values)
            yield gr.skip(), gr.skip(), STARTING[lang], gr.Button(visible=False), gr.skip()
            async for event in stream_events(service, job, session):
                if isinstance(event, InLine):
                    yield gr.skip(), gr.skip(), waiting_line(event.ahead, lang), gr.skip(), gr.skip()
                    continue
                shown = [*before, {"role": "assistant", "content": event.text}]
                done = isinstance(event, Done)
                reason = event.finish_reason if isinstance(event, Done) else None
                status = status_line(event.reply, service.backend.context_length, reason, lang)
                record = gr.skip()
                if done and event.text:
                    record = recorded(versions, len(before), event.reply.seed, settings, continued=continue_reply)
                yield shown, gr.skip(), status, gr.Button(visible=done and reason == "length"), record
        except UserError as error:
            log_user_error(error)
            gr.Warning(str(error), duration=None)
            # Nothing typed is lost: the chat goes back to where it was, a new message into the textbox.
            back = message if todo["back"] else gr.skip()
            yield todo["before"], back, f"⚠️ {error}", gr.skip(), todo["versions"]

    def stop(self, request: gr.Request) -> None:
        """Stop this browser session's reply (in line, preparing or streaming)."""
        self.service.stop(request.session_hash)

    def finish(self) -> tuple[Any, ...]:
        """After a reply (finished, failed, stopped, undone or refused): allow sending again."""
        return sending_allowed(False)

    def retry(self, history: History, versions: Versions, generating: bool) -> tuple[Any, ...]:
        """Answer the last user message again; the last reply is kept as an earlier version.

        Returns (chat, versions, generating, send, stop, pending).
        """
        asked = _trim_to_last_user_message(history)
        if generating or not asked:
            return *skipped(2 + SENDING_OUTPUTS), None
        kept = kept_version(versions, history, len(asked))
        return asked, kept, *sending_allowed(True), pending(history, versions, back=False)

    def start_continue(self, history: History, versions: Versions, generating: bool) -> tuple[Any, ...]:
        """Check that there is a reply to continue, and mark the chat as generating.

        Returns (generating, send, stop, pending).
        """
        if generating or not history or history[-1].get("role") != "assistant":
            return *skipped(SENDING_OUTPUTS), None
        return *sending_allowed(True), pending(history, versions, back=False)

    def edit(self, request: gr.Request, edit: gr.EditData, history: History, versions: Versions) -> tuple[Any, ...]:
        """An edited user message starts a new version of the conversation from it; its new reply follows.

        The earlier version (the message as it was and everything after it) is kept. A refused edit (blank,
        too long) keeps every turn as it was. Returns (chat, versions, generating, send, stop, pending).
        """
        self.service.stop(request.session_hash)
        index = _index(edit)
        if not isinstance(index, int) or not 0 <= index < len(history) or history[index].get("role") != "user":
            return *skipped(2), *sending_allowed(False), None
        original = [*history[:index], {"role": "user", "content": content_text(edit.previous_value)}]
        original += history[index + 1 :]
        text = content_text(edit.value).strip()
        try:
            checked_text("message", text, MAX_MESSAGE_CHARS, ChatInputError)
            if not text:
                raise ChatInputError(NOTHING_TO_SEND)
        except ChatInputError as error:
            log_user_error(error)
            gr.Warning(str(error))
            return original, gr.skip(), *sending_allowed(False), None
        kept = [*history[:index], {"role": "user", "content": text}]
        branch = kept_version(versions, original, index)
        return kept, branch, *sending_allowed(True), pending(original, versions, back=True)

    def undo(self, request: gr.Request, history: History, versions: Versions) -> tuple[Any, ...]:
        """Stop any reply, remove the last turn (its versions too) and put its message back into the textbox.

        Returns (chat, versions, textbox, status): the removed reply's figures leave the status line.
        """
        self.service.stop(request.session_hash)
        kept = _trim_to_last_user_message(history)
        if not kept:
            return [], trimmed(versions, 0), gr.skip(), ""
        last = kept.pop()
        return kept, trimmed(versions, len(kept)), content_text(last.get("content")), ""

    def switch_version(self, choice: object, history: History, versions: Versions, generating: bool) -> tuple[Any, ...]:
        """Show another version of a message (``choice``: "position:version", from 0); the chat continues from it.

        Returns (chat, versions, status, continue button); nothing changes while a reply is on its way or for a
        choice that names no version (one log line).
        """
        if generating:
            return skipped(4)
        try:
            at, to = (int(part) for part in str(choice).split(":", 1))
            shown, kept = switched(versions, history, at, to)
        except (ChatInputError, ValueError) as error:
            log_user_error(error)
            return skipped(4)
        return shown, kept, "", gr.Button(visible=False)

    def export_metadata(self, values: Sequence[Any]) -> dict[str, Any]:
        """The model (its id, never a path on the server), where it runs, and the settings."""
        backend = self.service.backend
        return {"model": backend.preset.public_id, "runs_on": backend.runs_on, **settings_by_name(values)}

    def export_json(self, history: History, versions: Versions, *values: Any) -> str:
        """The conversation as shown, as JSON text, each reply with its record (downloaded by the browser)."""
        return to_json(history, self.export_metadata(values), versions.get("made", {}))

    def export_markdown(self, history: History, versions: Versions, *values: Any) -> str:
        """The conversation as shown, as Markdown text, each reply with its seed (downloaded by the browser)."""
        return to_markdown(history, self.export_metadata(values), versions.get("made", {}))

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
        gr.Info(VOTE_RECORDED[language(request)])
        return ""
