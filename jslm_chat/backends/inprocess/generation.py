"""One in-process reply: a ``generate()`` thread, its streamer, stop, and reuse of earlier caches.

:func:`generate_reply` takes only plain, picklable data (a model key, prompt token ids, the
sampling parameters, the seed) and yields plain records, so that it can run in another process
(a ZeroGPU worker, see ``backend.py``) as well as in this one. The model, tokenizer and cache pool
are module state registered before launch (:func:`register_model`); a forked worker inherits them.

Inside, the prompt is prefilled in chunks (checking for a stop between chunks) into a cache that
may already hold a shared prefix of an earlier turn (``prefix_cache``), then ``generate()`` decodes
in a background thread whose ``StoppingCriteria`` checks the stop event after every step, while
this generator hands the streamer's text out, everything queued so far in one piece.
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import torch
from transformers import GenerationConfig, StoppingCriteria

from jslm_chat.backends.inprocess.growing_cache import new_cache
from jslm_chat.backends.inprocess.prefix_cache import PrefixCachePool, cached_tokens
from jslm_chat.backends.inprocess.static_cache import ThreadCaches, compact_copy, compile_config, static_sizes
from jslm_chat.backends.inprocess.streamer import JapaneseTextStreamer
from jslm_chat.backends.inprocess.threads import LongLivedThreads
from jslm_chat.model.backend import finish_reason
from jslm_chat.model.params import GenerationParams

logger = logging.getLogger(__name__)

TEXT_POLL_SECONDS = 0.1
TEXT_BATCH_SECONDS = 0.033
"""Text from the generation thread is batched this long: fewer records, no character later than this."""
JOIN_TIMEOUT_SECONDS = 120.0
WARM_UP_DECODE_STEPS = 3  # compiled steps per size: CUDA graph trees run it eagerly, record it, replay it
PREFILL_CHUNK_TOKENS = 512  # a stop during a long prefill takes effect after at most this many tokens


@dataclass
class LoadedModel:
    """A model in this process, with its tokenizer, its pool of reusable caches, and whether its
    decoding is compiled (static caches, ``torch.compile``) or eager (growing caches)."""

    model: Any
    tokenizer: Any
    caches: PrefixCachePool
    compiled: bool = False
    cache_keyword: str = "cache"
    context: int = 0  # tokens of the longest prompt and reply; 0: the model's configured length
    static_caches: list[ThreadCaches] = field(default_factory=list, repr=False)  # every serving thread's
    _compiled_threads: LongLivedThreads = field(default_factory=lambda: LongLivedThreads("jslm-compiled"), repr=False)
    _thread_caches: threading.local = field(default_factory=threading.local, repr=False)

    def __post_init__(self) -> None:
        self.context = self.context or getattr(self.model.config, "max_position_embeddings", 0)

    def run_in_background(self, work: Callable[[], None]) -> Callable[[], object]:
        """Run ``work`` in a thread of its own; returns a function that waits until it has returned.

        The thread is a new one, or with compiled decoding a long-lived one (see ``threads``).
        """
        if not self.compiled:
            thread = threading.Thread(target=work, name="jslm-generate", daemon=True)
            thread.start()
            return thread.join
        return self._compiled_threads.submit(work)

    def cache_for(self, kept: Any, tokens: int) -> Any:
        """A cache for a prompt and reply of ``tokens`` in all, continuing ``kept`` (from the pool) if given:
        ``kept`` itself, or with compiled decoding this thread's static cache of that size holding a copy."""
        if self.compiled:
            return self.thread_caches().holding(kept, tokens)
        return kept if kept is not None else new_cache(self.model.config)

    def keepable(self, cache: Any) -> Any:
        """What goes into the pool after a reply in ``cache``: the cache itself, or with compiled
        decoding a compact copy (the static cache serves this thread's next reply)."""
        return compact_copy(cache, self.model.config) if self.compiled else cache

    def thread_caches(self) -> ThreadCaches:
        """This serving thread's static caches, allocated on its first call (at warm-up)."""
        caches = getattr(self._thread_caches, "caches", None)
        if caches is None:
            caches = ThreadCaches(self.model.config, self.context, self.model.dtype, self.model.device)
            self._thread_caches.caches = caches
            self.static_caches.append(caches)
            logger.info("static caches of %s: %.2f GiB", threading.current_thread().name, caches.nbytes / 2**30)
        return caches

    def generation_config(self, params: GenerationParams) -> GenerationConfig:
        """``generate()`` settings for ``params`` on this model."""
        config = generation_config(self.tokenizer, self.model, params)
        if self.compiled:
            config.compile_config = compile_config()
        return config

    def warm_up_compiled(self, threads: int = 1) -> None:
        """Allocate the static caches and compile decoding and record its graphs now, for every cache
        size and in each of the ``threads`` serving threads (CUDA graphs are kept per thread), rather
        than during replies (where a Stop would wait for it). On failure decoding stays eager."""
        sizes = static_sizes(self.context)
        failed: list[BaseException] = []
        turns = [threading.Event() for _ in range(threads + 1)]
        all_warm = threading.Barrier(threads)

        def warm_up(turn: int) -> None:  # one thread after another, each held until all are warm
            turns[turn].wait()
            try:
                for size in sizes:
                    started = time.perf_counter()
                    self._decode(size, WARM_UP_DECODE_STEPS)
                    logger.info("compiled decoding, %d-token cache: %.1f s", size, time.perf_counter() - started)
            except Exception as error:
                failed.append(error)
                logger.exception("torch.compile failed; decoding stays eager")
            finally:
                turns[turn + 1].set()
                all_warm.wait()

        waits = [self._compiled_threads.submit(lambda turn=turn: warm_up(turn)) for turn in range(threads)]
        turns[0].set()
        for wait in waits:
            wait()
        self.compiled = not failed
        if failed:
            self.static_caches.clear()
            self._thread_caches = threading.local()
        else:
            logger.info(
                "compiled decoding: %d cache sizes (%s tokens) × %d serving threads: at most %d CUDA graphs;"
                " static caches %.2f GiB (one full-context cache per thread, shared by its sizes)",
                len(sizes),
                ", ".join(f"{size:,}" for size in sizes),
                len(self.static_caches),
                len(sizes) * len(self.static_caches),
                sum(caches.nbytes for caches in self.static_caches) / 2**30,
            )
        free_accelerator_memory()  # what building the static caches left in PyTorch's allocator

    def _decode(self, cache_size: int, steps: int) -> None:
        """``steps`` compiled decoding steps with this thread's cache of ``cache_size`` (the first
        token comes from the prefill, which is not compiled)."""
        input_ids = torch.tensor([[self.tokenizer.bos_token_id or 0]], device=self.model.device)
        params = GenerationParams(
            steps + 1, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, ignore_eos=True
        )
        with torch.inference_mode():
            self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                **{self.cache_keyword: self.thread_caches().holding(None, cache_size)},
                generation_config=self.generation_config(params),
            )


_MODELS: dict[str, LoadedModel] = {}
_keys = count()


def register_model(model: Any, tokenizer: Any, cache_slots: int, *, compiled: bool = False, context: int = 0) -> str:
    """Make a loaded model available to :func:`generate_reply`; returns its key. Its pool keeps at
    most ``cache_slots`` caches (its byte budget is set once the memory left is known); ``context``:
    the longest prompt and reply (0: the model's configured length)."""
    key = f"model-{next(_keys)}"
    pool = PrefixCachePool(cache_slots, new_cache=lambda: new_cache(model.config))
    _MODELS[key] = LoadedModel(model, tokenizer, pool, compiled, cache_keyword(model), context)
    return key


def cache_keyword(model: Any) -> str:
    """The argument that hands ``model`` a cache: ``cache`` in recent transformers 5,
    ``past_key_values`` before (5.17, as on some GPU images), where ``cache`` would be ignored."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def loaded_model(key: str) -> LoadedModel:
    """The model registered under ``key``."""
    return _MODELS[key]


@dataclass(frozen=True)
class Progress:
    """New text of the reply and how many tokens were generated so far."""

    text: str
    new_tokens: int


@dataclass(frozen=True)
class Finished:
    """How a reply ended: finish reason, counts, and a bilingual message when it failed."""

    finish_reason: str
    new_tokens: int
    reused_tokens: int
    error: str | None = None


def generate_reply(
    model_key: str, token_ids: list[int], params: GenerationParams, seed: int, stop: threading.Event | None = None
) -> Iterator[Progress | Finished]:
    """Yield :class:`Progress` records while the reply grows, then one :class:`Finished` record.

    A record with empty text comes at least every ``TEXT_POLL_SECONDS`` while nothing new arrives
    (prefill, a character still incomplete), so that a consumer can stop without waiting.

    Setting ``stop`` (or closing this generator) ends the generation within one decoding step or
    one prefill chunk; the thread is joined before this generator finishes.
    """
    generation = _Generation(loaded_model(model_key), token_ids, params, seed, stop or threading.Event())
    generation.start()
    try:
        yield from generation.progress()
    finally:
        generation.stop_and_join()
    yield generation.finished()


class _StopAndCount(StoppingCriteria):
    """Stops generation once ``event`` is set; counts decoding steps and keeps the newest sequence.

    On Apple GPUs (MPS) transformers checks a stop one step late and undoes that step: ``steps``
    runs one ahead there until :meth:`settle` sets it from what ``generate()`` returned (progress
    records count the tokens the streamer received instead, which are never ahead)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.steps = 0
        self.stopped = False
        self.sequence: torch.Tensor | None = None

    def settle(self, new_tokens: int) -> None:
        """The count of tokens the finished ``generate()`` really produced."""
        self.steps = new_tokens

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        self.steps += 1
        self.sequence = input_ids
        self.stopped = self.event.is_set()
        return torch.full((input_ids.shape[0],), self.stopped, dtype=torch.bool, device=input_ids.device)


class _Generation:
    """The state of one reply's generation thread."""

    def __init__(
        self, loaded: LoadedModel, token_ids: list[int], params: GenerationParams, seed: int, stop: threading.Event
    ) -> None:
        self.loaded = loaded
        self.token_ids = token_ids
        self.params = params
        self.seed = seed
        self.stop = stop
        self.counter = _StopAndCount(stop)
        self.streamer = JapaneseTextStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.done = threading.Event()  # set as the work's last step
        self.wait_for_work: Callable[[], object] = self.done.wait
        self.reused_tokens = 0
        self.error: BaseException | None = None

    def start(self) -> None:
        self.wait_for_work = self.loaded.run_in_background(self._run)

    def progress(self) -> Iterator[Progress]:
        """The streamer's text, at most one record per update interval; never blocks forever.

        Text that arrives within ``TEXT_BATCH_SECONDS`` of the last record waits for the
        rest of that interval and goes out with whatever followed it: a fast model does not pay
        for one UI update per token, and no character is late by more than the interval. The
        end of the reply does not wait.
        """
        pending, end = self.streamer.text_queue, self.streamer.stop_signal
        last_record = 0.0
        while True:
            try:
                parts = [pending.get(timeout=TEXT_POLL_SECONDS)]
            except queue.Empty:
                if self.done.is_set() and pending.empty():
                    return
                # A heartbeat: on ZeroGPU the worker sees a close only when this generator yields.
                yield Progress("", self.streamer.generated_token_count)
                continue
            wait = last_record + TEXT_BATCH_SECONDS - time.monotonic()
            if wait > 0 and parts[-1] is not end:
                self.done.wait(wait)  # the rest of the interval, or less if the reply ends (or is stopped)
            while parts[-1] is not end:
                try:
                    parts.append(pending.get_nowait())
                except queue.Empty:
                    break
            ended = parts[-1] is end
            text = "".join(parts[:-1] if ended else parts)
            if text:
                last_record = time.monotonic()
                yield Progress(text, self.streamer.generated_token_count)
            if ended:
                return

    def stop_and_join(self) -> None:
        self.stop.set()
        if self.done.wait(JOIN_TIMEOUT_SECONDS):
            self.wait_for_work()  # at once: the work ended; a thread of its own exits too
        else:
            logger.error("generation thread did not stop within %.0f s", JOIN_TIMEOUT_SECONDS)

    def finished(self) -> Finished:
        steps, reused = self.counter.steps, self.reused_tokens
        if self.error is not None:
            return Finished("error", steps, reused, describe_generation_error(self.error))
        return Finished(finish_reason(self.counter.stopped, steps, self.params.max_new_tokens), steps, reused)

    def _run(self) -> None:
        try:
            torch.manual_seed(self.seed)
            with torch.inference_mode():
                self._generate_retrying_out_of_memory()
        except BaseException as error:  # reported to the consumer as a Finished record
            self.error = error
            if is_out_of_memory(error):
                logger.error("out of memory again after freeing every kept cache: %s", error)
                release_failed_reply(error)
            else:
                logger.exception("generation failed")
            self.loaded.caches.clear()
            free_accelerator_memory()
        finally:
            self.streamer.end()
            self.done.set()

    def _generate_retrying_out_of_memory(self) -> None:
        """Generate; on out-of-memory free the failed attempt and every kept cache, then go on once
        from the tokens already streamed (a second out-of-memory is reported to the user)."""
        try:
            self._generate(self.token_ids, self.params)
            return
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            logger.warning("out of memory; freeing the kept caches and retrying once: %s", error)
            release_failed_reply(error)
        self.loaded.caches.clear()
        free_accelerator_memory()
        streamed = self._streamed_tokens()
        remaining = self.params.max_new_tokens - len(streamed)
        if remaining > 0 and not self.stop.is_set():
            self.streamer.resume()
            self._generate(self.token_ids + streamed, dataclasses.replace(self.params, max_new_tokens=remaining))

    def _streamed_tokens(self) -> list[int]:
        sequence, self.counter.sequence = self.counter.sequence, None
        return [] if sequence is None else sequence[0, len(self.token_ids) :].tolist()

    def _generate(self, token_ids: list[int], params: GenerationParams) -> None:
        model, caches = self.loaded.model, self.loaded.caches
        kept, self.reused_tokens = caches.take(token_ids)
        cache = self.loaded.cache_for(kept, len(token_ids) + params.max_new_tokens)
        del kept  # with compiled decoding a copy is in ``cache``: its memory is free for the reply
        input_ids = torch.tensor([token_ids], dtype=torch.long, device=model.device)
        if not self._prefill(cache, input_ids):
            self.counter.stopped = True
            caches.put(self.loaded.keepable(cache), token_ids)  # what was prefilled still helps a retry
            return
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            **{self.loaded.cache_keyword: cache},
            generation_config=self.loaded.generation_config(params),
            streamer=self.streamer,
            stopping_criteria=[self.counter],
        )
        self.counter.settle(output.shape[-1] - len(self.token_ids))
        caches.put(self.loaded.keepable(cache), output[0].tolist())

    def _prefill(self, cache: Any, input_ids: torch.Tensor) -> bool:
        """Fill ``cache`` with the prompt a chunk at a time, leaving the last chunk (1 to
        ``PREFILL_CHUNK_TOKENS`` tokens) to ``generate()``, which needs it for the first token
        anyway: one forward pass fewer. False if stopped."""
        model, length = self.loaded.model, input_ids.shape[1]
        start = cached_tokens(cache)
        while length - start > PREFILL_CHUNK_TOKENS:
            if self.stop.is_set():
                return False
            stop_at = start + PREFILL_CHUNK_TOKENS
            model(input_ids=input_ids[:, start:stop_at], **{self.loaded.cache_keyword: cache}, logits_to_keep=1)
            start = stop_at
        return not self.stop.is_set()


def generation_config(tokenizer: Any, model: Any, params: GenerationParams) -> GenerationConfig:
    """``generate()`` settings for ``params`` (top_k 0 stays 0: off, never the default 50)."""
    eos = model.generation_config.eos_token_id
    eos = eos if eos is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    sampling: dict[str, Any] = (
        {"do_sample": False}
        if params.greedy
        else {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k}
    )
    return GenerationConfig(
        max_new_tokens=params.max_new_tokens,
        min_new_tokens=params.max_new_tokens if params.ignore_eos else None,
        repetition_penalty=params.repetition_penalty,
        eos_token_id=eos,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=pad if pad is not None else eos,
        **sampling,
    )


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an accelerator running out of memory (CUDA, or MPS's RuntimeError)."""
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def release_failed_reply(error: BaseException) -> None:
    """Let go of what a failed attempt still holds: the traceback's frames keep its tensors alive."""
    traceback.clear_frames(error.__traceback__)
    error.__traceback__ = None


def describe_generation_error(error: BaseException) -> str:
    """A bilingual message for a failed generation (out of memory says what to do)."""
    if is_out_of_memory(error):
        return (
            "GPU のメモリが足りません（保存していた会話のキャッシュを解放して再試行しても足りませんでした）。"
            "新しい会話を始めるか、古いメッセージを削除して会話を短くしてから、もう一度お試しください。"
            "ほかの返信が同時に生成中のこともあるので、少し待ってからの再送も有効です。"
            " / Out of GPU memory, even after freeing the kept conversation caches and retrying."
            " Start a new conversation or delete old messages to shorten this one, then try again;"
            " other replies may be running at the same time, so trying again in a moment can also help."
        )
    return (
        f"生成中にエラーが発生しました: {type(error).__name__}: {error}"
        f" / Generation failed: {type(error).__name__}: {error}"
    )


def free_accelerator_memory() -> None:
    """Return freed memory to the GPU (after an error, or when caches are dropped)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
