"""The chat session layer: raw requests → checked conversations → one reply job with typed events.

History arrives as Gradio's messages format: a list of ``{"role": ..., "content": ...}`` dicts
whose content is a string (from the API) or a list of ``{"type": "text", "text": ...}`` blocks
(from the browser). Messages carrying ``metadata`` are UI notices and never reach the model.
Everything a request carries is checked here, where it arrives (:meth:`ChatService.request`):
bounded sizes, readable text, valid settings. The UI and the API then both call
:meth:`ChatService.start` and consume the job's events (:func:`stream_events`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass

from jslm_chat.chat.admission import Admission, Ticket
from jslm_chat.chat.history import ChatInputError, split_history
from jslm_chat.chat.receipts import Receipts
from jslm_chat.chat.relay import FRAME_SECONDS, FrameRelay
from jslm_chat.model.backend import Backend, Conversation, ReplyStream
from jslm_chat.model.params import SYSTEM_PROMPT, GenerationParams, checked_text
from jslm_chat.model.prompt import RenderedPrompt

logger = logging.getLogger(__name__)

WAIT_POLL_SECONDS = 0.5
MAX_MESSAGE_CHARS = 20_000

EMPTY_MESSAGE = "メッセージが空です。何か入力してください。 / The message is empty: type something first."


@dataclass(frozen=True)
class ChatRequest:
    """One checked request: the conversation to answer and how to sample the reply."""

    conversation: Conversation
    params: GenerationParams


@dataclass(frozen=True)
class InLine:
    """The request waits for a generation slot, with ``ahead`` requests before it."""

    ahead: int


@dataclass(frozen=True)
class Streaming:
    """The reply so far (a continued reply includes the part it continues)."""

    text: str
    reply: ReplyStream


@dataclass(frozen=True)
class Done:
    """The reply ended: finished, stopped (also while still in line) or cut at max_new_tokens."""

    text: str
    reply: ReplyStream
    finish_reason: str


ChatEvent = InLine | Streaming | Done


class ReplyJob:
    """One request's way through the service: in line, then streaming; stoppable at any moment."""

    def __init__(self, reply: ReplyStream, admission: Admission, prefix: str = "", client: str | None = None) -> None:
        self.reply = reply
        self.prefix = prefix
        self.client = client
        self._admission = admission
        self._ticket: Ticket | None = None
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    def join(self) -> Ticket:
        """The job's place in line, taken now unless it has one: raises :class:`BusyError` when the
        line is full (or the client holds its share). :meth:`events` joins by itself; an HTTP API joins
        first, to answer "busy" before its response starts."""
        with self._lock:
            if self._ticket is None:
                self._ticket = self._admission.join(self.client)
            ticket = self._ticket
        if self._stopped.is_set():
            ticket.leave()
        return ticket

    def events(self) -> Iterator[ChatEvent]:
        """Wait in line (an :class:`InLine` about twice a second), stream, then one :class:`Done`.

        Raises :class:`BusyError` at once when the line is full (or the client holds its share).
        """
        with self.join() as ticket:
            while not ticket.wait(WAIT_POLL_SECONDS):
                yield InLine(ticket.ahead)
            if ticket.admitted and not self._stopped.is_set():
                with self.reply:
                    for text in self.reply:
                        yield Streaming(self.prefix + text, self.reply)
        yield Done(self.prefix + self.reply.text, self.reply, self.reply.finish_reason or "stopped")

    def stop(self) -> None:
        """Stop the reply or leave the line: thread-safe, never blocks."""
        self._stopped.set()
        self.reply.stop()
        with self._lock:
            ticket = self._ticket
        if ticket is not None:
            ticket.leave()


class ChatService:
    """Checks requests against one backend's limits, admits them to a slot, and runs them."""

    def __init__(self, backend: Backend, max_new_tokens_limit: int, admission: Admission | None = None) -> None:
        self.backend = backend
        self.max_new_tokens_limit = min(max_new_tokens_limit, backend.context_length - 1)
        self.admission = admission or Admission(slots=backend.default_concurrency, max_waiting=16)
        self.receipts = Receipts()  # the replies each session received (votes refer to them)
        self._jobs: dict[str, ReplyJob] = {}
        self._jobs_lock = threading.Lock()

    def request(
        self,
        message: object,
        history: object,
        settings: Mapping[str, object],
        *,
        continue_reply: bool = False,
    ) -> ChatRequest:
        """A checked request from raw UI or API values; raises a user error (bilingual) if unusable.

        With ``continue_reply``, the history's last message is a reply that was cut off: the new
        reply continues it (``message`` must then be empty).
        """
        text = checked_text("message", message, MAX_MESSAGE_CHARS, ChatInputError)
        turns, user, partial = split_history(history, continue_reply=continue_reply)
        if continue_reply:
            if text.strip():
                raise ChatInputError(
                    "続きを生成するときはメッセージを空にしてください。"
                    " / Leave the message empty when continuing a reply."
                )
            text = user
        elif not text.strip():
            raise ChatInputError(EMPTY_MESSAGE)
        system = SYSTEM_PROMPT.check(settings.get("system_prompt", ""))
        params = GenerationParams.from_values(settings, self.max_new_tokens_limit)
        return ChatRequest(Conversation(system, turns, text, partial), params)

    def prompt(self, request: ChatRequest) -> RenderedPrompt:
        """The exact prompt the model would see for ``request``."""
        return self.backend.prepare(request.conversation, request.params.max_new_tokens)

    def start(self, request: ChatRequest, session: str | None = None, client: str | None = None) -> ReplyJob:
        """A job for ``request`` (prompt prepared now, generation once a slot is free).

        A new job for the same ``session`` stops the one it had. ``client`` (an address) shares the
        line fairly with other clients (see :mod:`~jslm_chat.chat.admission`).
        """
        reply = self.backend.stream(request.conversation, request.params)
        job = ReplyJob(reply, self.admission, prefix=request.conversation.continuation, client=client)
        if session is not None:
            with self._jobs_lock:
                previous, self._jobs[session] = self._jobs.get(session), job
            if previous is not None:
                previous.stop()
        return job

    def stop(self, session: str) -> bool:
        """Stop the reply running (or waiting) for ``session``; whether there was one."""
        with self._jobs_lock:
            job = self._jobs.pop(session, None)
        if job is not None:
            job.stop()
        return job is not None

    def forget(self, session: str, job: ReplyJob) -> None:
        """Drop ``session``'s record of ``job`` once it ended (a newer job stays)."""
        with self._jobs_lock:
            if self._jobs.get(session) is job:
                del self._jobs[session]


async def stream_events(service: ChatService, job: ReplyJob, session: str | None = None) -> AsyncIterator[ChatEvent]:
    """The job's events for an async consumer (Gradio), at most one update per display frame.

    Cancelling the consumer stops the job at once: Gradio cancels an event (Stop, Clear, a closed
    tab, ``job.cancel()`` from a client) by cancelling its task, the ``await`` inside the relay then
    raises whatever the job is doing (in line, prefilling, decoding), and ``finally`` stops the job
    without waiting for it. A finished reply is noted in ``service.receipts`` for ``session``.
    """
    try:
        async for event in FrameRelay(job.events(), FRAME_SECONDS, final=Done):
            if session is not None and isinstance(event, Done) and event.text:
                service.receipts.add(session, event.text)
            yield event
    finally:
        job.stop()
        if session is not None:
            service.forget(session, job)


def log_user_error(error: BaseException) -> None:
    """One log line for an error the user caused (no traceback: nothing is broken)."""
    logger.info("refused: %s: %s", type(error).__name__, error)
