"""What the app needs from a model backend: a torch-free interface every engine implements.

A backend owns a tokenizer and a preset, turns a :class:`Conversation` into the exact prompt
(:meth:`Backend.prepare`), and streams replies (:meth:`Backend.stream`) as :class:`ReplyStream`
objects: iterate one for the growing text; :meth:`ReplyStream.stop` stops it from any thread at
any time (before the first token too) without waiting; :meth:`ReplyStream.close` stops it and
releases what it holds. This module imports neither torch nor transformers: the UI, the API and
the chat layer depend on it alone. Adding a backend means one module with a subclass of
:class:`Backend` and :class:`ReplyStream`, plus one place in ``server.py`` that picks it.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

from jslm_chat.model.errors import UserError
from jslm_chat.model.params import GenerationParams
from jslm_chat.model.presets import ModelPreset
from jslm_chat.model.prompt import PromptBuilder, RenderedPrompt, TokenizerLike, Turn, get_format
from jslm_chat.model.stop_strings import find_stop, search_start, shown_length

FINISH_REASONS = ("eos", "length", "stop_string", "stopped", "error")


def finish_reason(stopped: bool, new_tokens: int, max_new_tokens: int) -> str:
    """``stopped``, ``length`` or ``eos``, for a generation that ended without an error."""
    if stopped:
        return "stopped"
    return "length" if new_tokens >= max_new_tokens else "eos"


class GenerationError(UserError, RuntimeError):
    """Generation failed (out of GPU memory, the engine died or timed out); the message is bilingual."""


@dataclass(frozen=True)
class Conversation:
    """What the model answers: a system prompt, finished turns and the newest user message.

    ``continuation`` is the start of a reply that was cut off: the prompt then ends with it (no
    end of turn), so the model goes on from there.
    """

    system: str
    turns: Sequence[Turn]
    message: str
    continuation: str = ""


class ReplyStream(ABC):
    """One reply being generated. Iterate once for the growing text; ``stop()`` / ``close()`` end it.

    After iteration: ``text`` (cut before a stop string of ``params.stop``: ``finish_reason``
    ``stop_string``), ``finish_reason`` (one of :data:`FINISH_REASONS`), ``new_tokens``,
    ``seed`` (the one used, also when drawn at random), ``tokens_per_second``,
    ``seconds_to_first_token`` and ``reused_tokens`` (prompt tokens a cache already held).
    Subclasses implement :meth:`_generate` (yield text pieces, call :meth:`_count_tokens` as tokens
    arrive, set ``finish_reason``) and may extend :meth:`close`.
    """

    def __init__(self, prompt: RenderedPrompt, params: GenerationParams) -> None:
        self.prompt = prompt
        self.params = params
        self.seed = params.seed if params.seed is not None else secrets.randbelow(2**31)
        self.text = ""
        self.finish_reason: str | None = None
        self.new_tokens = 0
        self.reused_tokens = 0
        self._stop = threading.Event()
        self._started_at: float | None = None
        self._first_token_at: float | None = None
        self._last_token_at: float | None = None

    @property
    def stopped(self) -> bool:
        """Whether a stop was asked for."""
        return self._stop.is_set()

    @property
    def seconds_to_first_token(self) -> float | None:
        """Latency from the start to the first generated token (prompt processing included)."""
        if self._first_token_at is None or self._started_at is None:
            return None
        return self._first_token_at - self._started_at

    @property
    def tokens_per_second(self) -> float | None:
        """Decoding speed after the first token."""
        first, last = self._first_token_at, self._last_token_at
        if first is None or last is None or self.new_tokens < 2 or last <= first:
            return None
        return (self.new_tokens - 1) / (last - first)

    def __iter__(self) -> Iterator[str]:
        if self._started_at is not None:
            raise RuntimeError("a reply can be iterated only once")
        self._started_at = time.perf_counter()
        try:
            if not self.stopped:
                yield from self._texts()
            if self.finish_reason is None:
                self.finish_reason = finish_reason(self.stopped, self.new_tokens, self.params.max_new_tokens)
        except GenerationError:
            self.finish_reason = "error"
            raise
        finally:
            if self.finish_reason is None:  # the consumer left early
                self.finish_reason = "stopped"
            self.close()

    def _texts(self) -> Iterator[str]:
        """The growing text; with stop strings, cut before the first one and never showing part of one."""
        stops = self.params.stop
        pieces = self._generate()
        shown = 0
        with contextlib.closing(pieces):
            for piece in pieces:
                before, self.text = len(self.text), self.text + piece
                if not stops:
                    yield self.text
                    continue
                end = find_stop(self.text, stops, search_start(before, stops))
                if end >= 0:
                    self.text, self.finish_reason = self.text[:end], "stop_string"
                    self.stop()
                visible = self.text if end >= 0 else self.text[: shown_length(self.text, stops)]
                if len(visible) > shown:
                    shown = len(visible)
                    yield visible
                if end >= 0:
                    return

    def stop(self) -> None:
        """Ask the reply to stop: thread-safe, never blocks, effective within one decoding step."""
        self._stop.set()

    def close(self) -> None:
        """Stop and release the reply's resources (threads, connections). Safe to call twice."""
        self.stop()

    def __enter__(self) -> ReplyStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _count_tokens(self, count: int = 1) -> None:
        """Record that ``count`` more tokens were generated just now."""
        now = time.perf_counter()
        self.new_tokens += count
        self._first_token_at = self._first_token_at or now
        self._last_token_at = now

    @abstractmethod
    def _generate(self) -> Iterator[str]:
        """Yield the reply's new text pieces; check ``stopped``; raise :class:`GenerationError`."""


class Backend(ABC):
    """A model behind a tokenizer: exact prompts, streamed replies, a label for the header."""

    default_concurrency = 1
    """Replies generated at once unless ``--concurrency`` says otherwise."""

    def __init__(self, preset: ModelPreset, tokenizer: TokenizerLike) -> None:
        self.preset = preset
        self.tokenizer = tokenizer
        self._prompts = PromptBuilder(tokenizer, get_format(preset.prompt_format))

    @property
    def context_length(self) -> int:
        """Tokens the model attends to: prompt plus reply."""
        return self.preset.context_length

    @property
    @abstractmethod
    def runs_on(self) -> str:
        """Where and how the model runs, for people: ``cuda · float16``, ``vLLM (http://…)``."""

    @property
    def label(self) -> str:
        """One line for the header and exports: model · where it runs."""
        return f"{self.preset.display_name} · {self.runs_on}"

    def prepare(self, conversation: Conversation, max_new_tokens: int) -> RenderedPrompt:
        """The exact prompt for ``conversation``, oldest turns dropped to leave room for the reply.

        Raises ``PromptTooLongError`` when even the newest message alone does not fit.
        """
        return self._prompts.build(
            conversation.system,
            conversation.turns,
            conversation.message,
            budget=self.context_length - max_new_tokens,
            continuation=conversation.continuation,
        )

    def stream(self, conversation: Conversation, params: GenerationParams) -> ReplyStream:
        """A reply to ``conversation`` (generation starts on first iteration)."""
        return self._start(self.prepare(conversation, params.max_new_tokens), params)

    @abstractmethod
    def _start(self, prompt: RenderedPrompt, params: GenerationParams) -> ReplyStream:
        """A reply stream for an already prepared prompt."""

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release what the backend holds (connections, caches)."""
