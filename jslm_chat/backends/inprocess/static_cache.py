"""The cache of compiled decoding (``--compile``): transformers' ``StaticCache`` in a few sizes.

With a static cache, ``generate()`` runs each decoding step through ``torch.compile`` (on a GPU
with CUDA graphs: one launch per token instead of hundreds). Sizes double from
``STATIC_STEP_TOKENS`` up to the model's context (at 4,096: 512, 1,024, 2,048 and 4,096): few
shapes to compile and record, little memory held unused. A cache kept from an earlier turn is
used again when the new prompt and its reply fit in it, else copied into the next size up. Every
size is compiled and recorded at start-up in each serving thread (``LoadedModel.warm_up_compiled``).

Not done: the caches are not preallocated. Each new ``StaticCache`` has new addresses, which
transformers marks static, so CUDA graph trees record that size again for it (up to torch's
re-record limit, then that size runs without graphs): a reply that needs a fresh cache pays for
one recording, and graphs accumulate with the number of caches made.
"""

from __future__ import annotations

import functools
from typing import Any

from transformers import CompileConfig, StaticCache

from jslm_chat.backends.inprocess.prefix_cache import cached_tokens

STATIC_STEP_TOKENS = 512


def static_capacity(tokens: int, context: int) -> int:
    """The cache size for ``tokens`` (prompt + reply): the least doubling of the step that holds
    them, at most the model's context (unless ``tokens`` is larger still)."""
    capacity = STATIC_STEP_TOKENS
    while capacity < tokens:
        capacity *= 2
    return min(capacity, max(context, tokens))


def static_sizes(context: int) -> list[int]:
    """Every cache size compiled decoding uses for a model of ``context`` tokens."""
    sizes = [static_capacity(1, context)]
    while sizes[-1] < context:
        sizes.append(static_capacity(sizes[-1] + 1, context))
    return sizes


def static_cache_for(config: Any, kept: StaticCache | None, tokens: int) -> StaticCache:
    """A static cache with room for ``tokens``, holding what ``kept`` holds (copied if it is too small)."""
    if kept is not None and kept.get_max_length() >= tokens:
        return kept
    context = getattr(config, "max_position_embeddings", tokens)
    cache = StaticCache(config=config, max_cache_len=static_capacity(tokens, context))
    held = cached_tokens(kept) if kept is not None else 0
    if kept is not None and held:
        for old, new in zip(kept.layers, cache.layers, strict=True):
            new.update(old.keys[..., :held, :], old.values[..., :held, :])
    return cache


@functools.cache
def compile_config() -> CompileConfig:
    """``generate()``'s compile settings, one object: transformers' defaults, on any device (by
    itself it compiles only on accelerators)."""
    config = CompileConfig()
    config._compile_all_devices = True
    return config
