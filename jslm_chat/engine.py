"""The generation engine: stream replies from a background ``generate()`` thread, stop for real.

Only this module, ``loading`` and the demo model builder touch torch. The UI talks to :class:`Engine`
through :meth:`Engine.stream`, which returns a :class:`Reply`: iterate it for the growing text;
closing it (leaving a ``with`` block, or closing the generator that iterates it, as Gradio does
when a client cancels or disconnects) sets a per-request event that a ``StoppingCriteria`` checks
after every decoding step, then joins the generation thread.
"""

from __future__ import annotations

import gc
import logging
import queue
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from transformers import GenerationConfig, StoppingCriteria

from .params import GenerationParams
from .presets import ModelPreset
from .prompt import PromptBuilder, RenderedPrompt, Turn, get_format
from .streaming import JapaneseTextStreamer

logger = logging.getLogger(__name__)

QUEUE_POLL_SECONDS = 0.2
JOIN_TIMEOUT_SECONDS = 120.0


class GenerationError(RuntimeError):
    """Generation failed inside the background thread (for example, out of GPU memory)."""


@dataclass(frozen=True)
class Conversation:
    """What the model answers: a system prompt, finished turns and the newest user message."""

    system: str
    turns: Sequence[Turn]
    message: str


@dataclass(frozen=True)
class Placement:
    """Where and in which precision the weights live."""

    device_map: str | dict[str, str] | None
    dtype: torch.dtype
    device_label: str

    @property
    def dtype_name(self) -> str:
        """The dtype as a short name (``float16``)."""
        return str(self.dtype).removeprefix("torch.")


class Engine:
    """A loaded model and tokenizer that stream replies to conversations."""

    def __init__(self, model: Any, tokenizer: Any, preset: ModelPreset, placement: Placement) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.preset = preset
        self.placement = placement
        self._prompts = PromptBuilder(tokenizer, get_format(preset.prompt_format))

    @property
    def context_length(self) -> int:
        """Tokens the model attends to: prompt plus reply."""
        return self.preset.context_length

    @property
    def dtype_label(self) -> str:
        """The weights' dtype, as a short name (``float16``)."""
        return self.placement.dtype_name

    def prompt_budget(self, max_new_tokens: int) -> int:
        """How many prompt tokens fit next to a reply of ``max_new_tokens``."""
        return self.context_length - max_new_tokens

    def prepare(self, conversation: Conversation, max_new_tokens: int) -> RenderedPrompt:
        """The exact prompt for ``conversation``, oldest turns dropped to leave room for the reply."""
        return self._prompts.build(
            conversation.system,
            conversation.turns,
            conversation.message,
            budget=self.prompt_budget(max_new_tokens),
        )

    def stream(self, conversation: Conversation, params: GenerationParams) -> Reply:
        """Start a reply (the thread starts on first iteration). Raises ``PromptTooLongError``."""
        return Reply(self, self.prepare(conversation, params.max_new_tokens), params)


class _StopAndCount(StoppingCriteria):
    """Stops generation once ``event`` is set; records when each step finished."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.stopped = False
        self.steps = 0
        self.first_step_at: float | None = None
        self.last_step_at: float | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        now = time.perf_counter()
        self.steps += 1
        self.first_step_at = self.first_step_at or now
        self.last_step_at = now
        self.stopped = self.event.is_set()
        return torch.full((input_ids.shape[0],), self.stopped, dtype=torch.bool, device=input_ids.device)


class Reply:
    """One reply being generated. Iterate once for the growing text; ``close()`` stops it.

    After iteration: ``text``, ``new_tokens``, ``finish_reason`` (``"eos"``, ``"length"``,
    ``"stopped"`` or ``"error"``), ``seed`` (the one used, also when drawn at random), ``tokens_per_second`` and
    ``seconds_to_first_token``.
    """

    def __init__(self, engine: Engine, prompt: RenderedPrompt, params: GenerationParams) -> None:
        self.prompt = prompt
        self.params = params
        self.seed = params.seed if params.seed is not None else secrets.randbelow(2**31)
        self.text = ""
        self.finish_reason: str | None = None
        self._engine = engine
        self._stop = threading.Event()
        self._progress = _StopAndCount(self._stop)
        # ``_chunks`` reads the streamer's queue itself, with its own timeout.
        self._streamer = JapaneseTextStreamer(engine.tokenizer, skip_prompt=True, skip_special_tokens=True)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._started_at = 0.0

    @property
    def new_tokens(self) -> int:
        """Tokens generated so far."""
        return self._progress.steps

    @property
    def seconds_to_first_token(self) -> float | None:
        """Latency from start to the first generated token (prompt processing included)."""
        first = self._progress.first_step_at
        return None if first is None else first - self._started_at

    @property
    def tokens_per_second(self) -> float | None:
        """Decoding speed after the first token."""
        first, last = self._progress.first_step_at, self._progress.last_step_at
        if first is None or last is None or self.new_tokens < 2 or last <= first:
            return None
        return (self.new_tokens - 1) / (last - first)

    @property
    def running(self) -> bool:
        """Whether the generation thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def __iter__(self) -> Iterator[str]:
        if self._thread is not None:
            raise RuntimeError("a Reply can be iterated only once")
        self._started_at = time.perf_counter()
        self._thread = threading.Thread(target=self._generate, name="jslm-generate", daemon=True)
        self._thread.start()
        try:
            for chunk in self._chunks():
                self.text += chunk
                yield self.text
        finally:
            self.close()
        if self._error is not None:
            raise _as_generation_error(self._error) from self._error

    def close(self) -> None:
        """Stop generating (within one decoding step) and wait for the thread to end."""
        self._stop.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(JOIN_TIMEOUT_SECONDS)
        if thread.is_alive():
            logger.error("generation thread did not stop within %.0f s", JOIN_TIMEOUT_SECONDS)

    def __enter__(self) -> Reply:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _chunks(self) -> Iterator[str]:
        """Text from the streamer, everything queued so far in one chunk; never blocks forever.

        A consumer slower than the model (a browser over a slow link, say) gets one update with
        all the new text rather than a growing backlog of one-token updates.
        """
        pending = self._streamer.text_queue
        end = self._streamer.stop_signal
        while True:
            try:
                parts = [pending.get(timeout=QUEUE_POLL_SECONDS)]
            except queue.Empty:
                if self._thread is not None and not self._thread.is_alive() and pending.empty():
                    return
                continue
            while parts[-1] is not end:
                try:
                    parts.append(pending.get_nowait())
                except queue.Empty:
                    break
            ended = parts[-1] is end
            text = "".join(parts[:-1] if ended else parts)
            if text:
                yield text
            if ended:
                return

    def _generate(self) -> None:
        engine, params = self._engine, self.params
        device = engine.model.device
        input_ids = torch.tensor([self.prompt.token_ids], dtype=torch.long, device=device)
        try:
            torch.manual_seed(self.seed)
            with torch.inference_mode():
                engine.model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    generation_config=_generation_config(engine, params),
                    streamer=self._streamer,
                    stopping_criteria=[self._progress],
                )
        except BaseException as error:  # reported to the consumer, which re-raises it
            self._error = error
            logger.exception("generation failed")
            self._streamer.end()
            _free_accelerator_memory()
        if self._error is not None:
            self.finish_reason = "error"
        elif self._progress.stopped:
            self.finish_reason = "stopped"
        else:
            self.finish_reason = "length" if self.new_tokens >= params.max_new_tokens else "eos"


def _generation_config(engine: Engine, params: GenerationParams) -> GenerationConfig:
    model_config = engine.model.generation_config
    eos = model_config.eos_token_id if model_config.eos_token_id is not None else engine.tokenizer.eos_token_id
    pad = engine.tokenizer.pad_token_id
    sampling: dict[str, Any] = (
        {"do_sample": False}
        if params.greedy
        else {
            "do_sample": True,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k,  # 0 turns top-k off (None would fall back to the default, 50)
        }
    )
    return GenerationConfig(
        max_new_tokens=params.max_new_tokens,
        repetition_penalty=params.repetition_penalty,
        eos_token_id=eos,
        bos_token_id=engine.tokenizer.bos_token_id,
        pad_token_id=pad if pad is not None else eos,
        **sampling,
    )


def _as_generation_error(error: BaseException) -> GenerationError:
    if isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower():
        return GenerationError(
            "GPU のメモリが足りなくなりました。最大生成トークン数を減らすか、会話をクリアしてもう一度お試しください。"
            " / Out of GPU memory: lower max_new_tokens or clear the conversation, then try again."
        )
    return GenerationError(
        f"生成中にエラーが発生しました: {type(error).__name__}: {error}"
        f" / Generation failed: {type(error).__name__}: {error}"
    )


def _free_accelerator_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
