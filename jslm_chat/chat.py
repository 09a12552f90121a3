"""The chat session layer: chat history in messages format ↔ conversation turns, and requests.

History arrives as Gradio's messages format: a list of ``{"role": ..., "content": ...}`` dicts
whose content is a string (from the API) or a list of ``{"type": "text", "text": ...}`` blocks
(from the browser). Messages carrying ``metadata`` are UI notices and never reach the model.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .admission import Admission, BusyError
from .engine import Conversation, Engine, GenerationError, Reply
from .params import GenerationParams, InvalidParameterError
from .prompt import PromptTooLongError, RenderedPrompt, Turn

Message = dict[str, Any]
ROLES = ("user", "assistant", "system")


class ChatInputError(ValueError):
    """The message or history cannot be used (empty message, malformed history)."""


WAIT_POLL_SECONDS = 0.5

EMPTY_MESSAGE = "メッセージが空です。何か入力してください。 / The message is empty: type something first."


def content_text(content: object) -> str:
    """The plain text of a message's content: a string, a text block, or a list of blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping):
        text = content.get("text", "")
        return text if isinstance(text, str) else ""
    if isinstance(content, Sequence):
        return "".join(content_text(block) for block in content)
    raise ChatInputError(f"メッセージの内容が読めません / Unreadable message content: {content!r}")


def is_notice(message: Mapping[str, Any]) -> bool:
    """Whether a message is a UI notice (it has metadata) rather than part of the conversation."""
    return bool(message.get("metadata"))


def history_to_turns(history: Sequence[Mapping[str, Any]] | None) -> list[Turn]:
    """Finished turns from a messages-format history.

    Consecutive assistant messages are joined; a user message with no reply yet (a reply that
    was stopped before its first token) is kept with an empty reply; system messages and
    notices are skipped.
    """
    if history is None:
        return []
    if not isinstance(history, Sequence) or isinstance(history, str):
        raise ChatInputError(
            "history は {role, content} の辞書のリストにしてください / history must be a list of dicts"
        )
    turns: list[Turn] = []
    user: str | None = None
    reply = ""
    for message in history:
        role = _role(message)
        if role == "system" or is_notice(message):
            continue
        text = content_text(message.get("content"))
        if role == "user":
            if user is not None:
                turns.append(Turn(user, reply))
            user, reply = text, ""
        elif user is not None:
            reply += text
    if user is not None:
        turns.append(Turn(user, reply))
    return turns


def _role(message: object) -> str:
    if not isinstance(message, Mapping) or message.get("role") not in ROLES:
        raise ChatInputError(
            "history の各要素は role が user / assistant の辞書にしてください"
            f" / each history item must be a dict with role user or assistant: {message!r}"
        )
    return str(message["role"])


@dataclass(frozen=True)
class ChatRequest:
    """One new message with its history, system prompt and sampling parameters."""

    message: str
    history: Sequence[Mapping[str, Any]]
    system_prompt: str
    params: GenerationParams

    @classmethod
    def from_values(
        cls,
        message: str | None,
        history: Sequence[Mapping[str, Any]] | None,
        system_prompt: str | None,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        repetition_penalty: float,
        seed: int | str | None,
    ) -> ChatRequest:
        """A request from raw UI or API values (``None`` text means empty; an empty seed is random)."""
        params = GenerationParams(max_new_tokens, temperature, top_p, top_k, repetition_penalty, _seed(seed))
        return cls(message or "", history or [], system_prompt or "", params)  # type: ignore[arg-type]

    def conversation(self) -> Conversation:
        """The conversation to prompt with; raises :class:`ChatInputError` for an empty message."""
        if not self.message.strip():
            raise ChatInputError(EMPTY_MESSAGE)
        return Conversation(self.system_prompt, history_to_turns(self.history), self.message)


def _seed(value: int | str | None) -> int | str | None:
    """``None`` for an empty seed; a typed number as an int; anything else as-is (validation refuses it)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        return value


@dataclass(frozen=True)
class InLine:
    """The request is waiting for a generation slot, with ``ahead`` requests before it."""

    ahead: int


USER_ERRORS = (ChatInputError, InvalidParameterError, PromptTooLongError, GenerationError, BusyError)
"""Errors caused by what the user sent or by load: shown to them, never a crash."""


class ChatService:
    """Validates requests against one engine's limits, admits them to a slot, and runs them."""

    def __init__(self, engine: Engine, max_new_tokens_limit: int, admission: Admission | None = None) -> None:
        self.engine = engine
        self.max_new_tokens_limit = min(max_new_tokens_limit, engine.context_length - 1)
        self.admission = admission or Admission(slots=1, max_waiting=16)
        self._stop_events: dict[str, threading.Event] = {}

    def checked(self, request: ChatRequest) -> tuple[Conversation, GenerationParams]:
        """The request's conversation and validated parameters (raises on bad input)."""
        params = request.params.validated(self.max_new_tokens_limit)
        return request.conversation(), params

    def prompt(self, request: ChatRequest) -> RenderedPrompt:
        """The exact prompt the model would see for ``request``."""
        conversation, params = self.checked(request)
        return self.engine.prepare(conversation, params.max_new_tokens)

    def reply(self, request: ChatRequest) -> Reply:
        """A reply to ``request``, ready to iterate (generation starts on first iteration)."""
        conversation, params = self.checked(request)
        return self.engine.stream(conversation, params)

    def run(
        self, reply: Reply, stream: Callable[[Reply], Iterator[str]] = iter, *, session: str | None = None
    ) -> Iterator[InLine | str]:
        """Wait in line for a slot (yielding :class:`InLine` about twice a second), then stream.

        Yields the growing reply text from ``stream(reply)``. Raises :class:`BusyError` at once
        when the line is full. Closing this generator, or :meth:`stop` for its ``session``, stops
        the reply (within one token) and frees the slot; after a stop the generator simply ends.
        """
        stop = threading.Event()
        if session is not None:
            self._stop_events[session] = stop
        try:
            with self.admission.join() as ticket, reply:
                while not ticket.wait(WAIT_POLL_SECONDS):
                    if stop.is_set():
                        return
                    yield InLine(ticket.ahead)
                chunks = stream(reply)
                try:
                    for text in chunks:
                        if stop.is_set():
                            return
                        yield text
                finally:
                    chunks.close()  # type: ignore[attr-defined]
        finally:
            if session is not None and self._stop_events.get(session) is stop:
                del self._stop_events[session]

    def stop(self, session: str) -> bool:
        """Stop the reply running (or waiting) for ``session``; whether there was one."""
        event = self._stop_events.get(session)
        if event is not None:
            event.set()
        return event is not None
