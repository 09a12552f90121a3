"""The in-process backend: the model and tokenizer loaded in this process (transformers).

:class:`InProcessBackend` streams replies through :func:`~jslm_chat.backends.inprocess.generation.generate_reply`.
On a ZeroGPU Space that generator runs inside ``spaces.GPU`` (a forked worker that receives its
arguments pickled): it takes plain data and yields plain records, and the reply object here, in
the main process, turns them back into text, figures and errors. Elsewhere ``spaces.GPU`` is not
applied and the stop event is shared directly, so a stop takes effect within one step even during
a long prefill. Only this module, ``generation``, ``loading`` and ``demo_model`` touch torch.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from jslm_chat.backends.inprocess import zerogpu
from jslm_chat.backends.inprocess.generation import Finished, generate_reply, loaded_model, register_model
from jslm_chat.backends.inprocess.memory import cache_bytes_per_token, cache_pool_budget
from jslm_chat.backends.inprocess.static_cache import compile_blocker
from jslm_chat.model.backend import Backend, GenerationError, ReplyStream
from jslm_chat.model.params import GenerationParams
from jslm_chat.model.presets import ModelPreset
from jslm_chat.model.prompt import RenderedPrompt

logger = logging.getLogger(__name__)

DEFAULT_CACHE_SLOTS = 2  # conversations whose cache is kept: the 7B's full 4,096-token cache is 2 GiB


@dataclass(frozen=True)
class Placement:
    """Where and in which precision the weights live."""

    device_map: str | dict[str, str] | None
    dtype: torch.dtype
    device_label: str
    then_move_to: str | None = None  # load on the CPU, then move here (ZeroGPU)
    quantization: str = "none"  # none, int8 or nf4 (bitsandbytes)
    max_memory: dict[int, int] | None = None  # per GPU, with device_map "auto": room left for the caches

    @property
    def dtype_name(self) -> str:
        """The dtype as a short name (``float16``)."""
        return str(self.dtype).removeprefix("torch.")


class InProcessBackend(Backend):
    """A transformers model loaded in this process."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        preset: ModelPreset,
        placement: Placement,
        *,
        cache_slots: int = DEFAULT_CACHE_SLOTS,
        compiled: bool = False,
        concurrency: int = 1,
    ) -> None:
        """``concurrency``: replies that may run at once (each gets a warmed thread with
        ``compiled``, and room for a full-context cache beside the pool on a GPU)."""
        super().__init__(preset, tokenizer)
        self.placement = placement
        on_zerogpu = zerogpu.enabled()  # a fresh worker per reply: nothing kept, nothing compiled
        if compiled and on_zerogpu:
            logger.warning("--compile は ZeroGPU では使いません。 / --compile is not used on ZeroGPU.")
        elif compiled and (blocker := compile_blocker(model)):
            logger.warning(
                "--compile を使わず通常のデコードで動かします / --compile is off, decoding runs eagerly: %s", blocker
            )
            compiled = False
        self.model_key = register_model(
            model,
            tokenizer,
            0 if on_zerogpu else cache_slots,
            compiled=compiled and not on_zerogpu,
            context=preset.context_length,
        )
        if self.compiled:
            loaded_model(self.model_key).warm_up_compiled(concurrency)
        loaded_model(self.model_key).caches.budget_bytes = pool_budget(model, preset.context_length, concurrency)

    @property
    def model(self) -> Any:
        """The loaded transformers model."""
        return loaded_model(self.model_key).model

    @property
    def compiled(self) -> bool:
        """Whether decoding is compiled (``--compile``)."""
        return loaded_model(self.model_key).compiled

    @property
    def runs_on(self) -> str:
        quantized = f" · {self.placement.quantization}" if self.placement.quantization != "none" else ""
        compiled = " · compiled" if self.compiled else ""
        return f"{self.placement.device_label} · {self.placement.dtype_name}{quantized}{compiled}"

    def _start(self, prompt: RenderedPrompt, params: GenerationParams) -> InProcessReply:
        return InProcessReply(self.model_key, prompt, params)

    def close(self) -> None:
        loaded_model(self.model_key).caches.clear()


def pool_budget(model: Any, context_tokens: int, running_replies: int = 1) -> int | None:
    """Bytes the kept caches may take on a CUDA device, measured now (after loading and compiling,
    so the static caches of compiled decoding are already out of the free memory); None elsewhere,
    where the pool is bounded by its count of conversations alone. The room kept for each running
    reply holds its cache (eager) or the copies in and out of its static cache (compiled)."""
    if model.device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(model.device)
    per_token = cache_bytes_per_token(model.config, model.dtype.itemsize)
    budget = cache_pool_budget(free, total, per_token, context_tokens, running_replies)
    logger.info(
        "kept conversation caches: up to %.1f GiB (%d tokens) of %.1f GiB free on %s",
        budget / 2**30,
        budget // per_token,
        free / 2**30,
        model.device,
    )
    return budget


class InProcessReply(ReplyStream):
    """A reply generated by :func:`generate_reply`, here or in a ZeroGPU worker."""

    def __init__(self, model_key: str, prompt: RenderedPrompt, params: GenerationParams) -> None:
        super().__init__(prompt, params)
        self._model_key = model_key
        self._records: Iterator[Any] | None = None
        self._lock = threading.Lock()

    def _generate(self) -> Iterator[str]:
        if zerogpu.enabled():  # arguments and records cross a process boundary: plain data only
            records = zerogpu.stream_on_gpu(self._model_key, self.prompt.token_ids, self.params, self.seed)
        else:
            records = generate_reply(self._model_key, self.prompt.token_ids, self.params, self.seed, self._stop)
        with self._lock:
            self._records = records
        for record in records:
            if isinstance(record, Finished):
                self._finish(record)
                return
            if record.text:
                self._count_tokens(record.new_tokens - self.new_tokens)
                yield record.text
            if self.stopped:
                self.finish_reason = "stopped"
                return

    def _finish(self, record: Finished) -> None:
        if record.new_tokens > self.new_tokens:  # tokens that added no text (the EOS, say) end now
            self._count_tokens(record.new_tokens - self.new_tokens)
        self.reused_tokens = record.reused_tokens
        if record.error is not None:
            raise GenerationError(record.error)
        self.finish_reason = record.finish_reason

    def close(self) -> None:
        """Stop, and end the generator (joining the generation thread, or closing the GPU worker)."""
        super().close()
        with self._lock:
            records, self._records = self._records, None
        close = getattr(records, "close", None)
        if close is not None:
            with contextlib.suppress(ValueError):  # still running in another thread: the stop event ends it
                close()
