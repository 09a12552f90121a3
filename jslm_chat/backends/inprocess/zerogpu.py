"""ZeroGPU (Hugging Face Spaces): generation runs in ``spaces.GPU``'s forked worker.

``spaces.GPU`` pickles the arguments of the decorated function into a worker process and every
yielded value back, so :func:`stream_on_gpu` takes and yields plain data only (see
``generation.generate_reply``). Closing it (Gradio's cancel, our Stop) makes ``spaces`` close
the worker's generator, whose ``finally`` stops and joins the generation thread there. The GPU
time asked for each reply is sized from ``max_new_tokens``, not a fixed budget, so a visitor's
daily quota lasts. Outside ZeroGPU nothing here is applied.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from jslm_chat.backends.inprocess.generation import Finished, Progress, generate_reply
from jslm_chat.model.params import GenerationParams

ON_VALUES = ("1", "t", "true")  # what the spaces package itself accepts for SPACES_ZERO_GPU
BASE_SECONDS = 10  # attaching the GPU and prefilling a full context
SECONDS_PER_TOKEN = 1 / 20  # a conservative decoding speed for a 7B model in fp16 on ZeroGPU's H200 slices
MAX_SECONDS = 120


def enabled() -> bool:
    """Whether this process runs on a ZeroGPU Space (``SPACES_ZERO_GPU`` set as spaces reads it)."""
    return os.environ.get("SPACES_ZERO_GPU", "").strip().lower() in ON_VALUES


def gpu_seconds(model_key: str, token_ids: list[int], params: GenerationParams, seed: int) -> int:
    """The GPU time one reply may take, from its length (ZeroGPU's ``duration`` callable)."""
    return min(MAX_SECONDS, round(BASE_SECONDS + params.max_new_tokens * SECONDS_PER_TOKEN))


def _records_on_gpu(
    model_key: str, token_ids: list[int], params: GenerationParams, seed: int
) -> Iterator[Progress | Finished]:
    """The reply's records, generated where the GPU is attached."""
    yield from generate_reply(model_key, token_ids, params, seed)


RecordStream = Callable[[str, list[int], GenerationParams, int], Iterator[Progress | Finished]]


def _wrapped() -> RecordStream:
    if not enabled():
        return _records_on_gpu
    import spaces

    wrapped: RecordStream = spaces.GPU(duration=gpu_seconds)(_records_on_gpu)
    return wrapped


stream_on_gpu = _wrapped()
