"""The caches of compiled decoding (``--compile``): transformers' ``StaticCache`` in a few sizes,
allocated once per serving thread so that their addresses never change.

With a static cache, ``generate()`` runs each decoding step through ``torch.compile`` in
"reduce-overhead" mode (on a GPU with CUDA graphs: one launch per token instead of hundreds).
Sizes double from ``STATIC_STEP_TOKENS`` up to the context (at 4,096: 512, 1,024, 2,048 and
4,096): few shapes to compile and record. transformers marks a static cache's tensors with
``torch._dynamo.mark_static_address`` (unguarded): CUDA graph trees bake their addresses into a
recorded graph, and a cache at a new address makes them record that size again (torch 2.13 does
not count such re-recordings toward any limit: graphs and their memory would pile up with every
new cache). So each serving thread holds :class:`ThreadCaches`: one ``StaticCache`` per size,
reset in place between replies. A thread decodes one reply at a time, so its sizes share one
full-context buffer per layer (each size a view of its start): a thread holds one full-context
cache, whatever the number of sizes. Recorded graphs: at most sizes × serving threads.

Conversations are not kept in these caches: a reply's kept prefix (``prefix_cache``, compact
caches) is copied into the thread's cache of the right size before the prefill, and what the
cache holds afterwards is copied out again for the pool (a few milliseconds for a full 7B cache on
a GPU, against a prefill of hundreds).

Compiled decoding is kept off (:func:`compile_blocker`) where it cannot work this way.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from transformers import CompileConfig, StaticCache

from jslm_chat.backends.inprocess.growing_cache import new_cache
from jslm_chat.backends.inprocess.memory import key_value_shape
from jslm_chat.backends.inprocess.prefix_cache import cache_nbytes, cached_tokens, copy_prefix

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


class ThreadCaches:
    """One serving thread's static caches, one per size, allocated once; every size is a view of
    the start of the largest one's buffers (a thread decodes one reply at a time)."""

    def __init__(self, config: Any, context: int, dtype: torch.dtype, device: torch.device) -> None:
        self.context = context
        kv_heads, head_dim = key_value_shape(config)
        self.caches: dict[int, StaticCache] = {}
        for size in reversed(static_sizes(context)):
            cache = StaticCache(config=config, max_cache_len=size)
            cache.early_initialization(batch_size=1, num_heads=kv_heads, head_dim=head_dim, dtype=dtype, device=device)
            if self.caches:  # the largest one is made first: share its buffers
                largest = self.caches[context]
                for layer, full in zip(cache.layers, largest.layers, strict=True):
                    layer.keys = _leading_view(full.keys, layer.keys.shape)
                    layer.values = _leading_view(full.values, layer.values.shape)
            self.caches[size] = cache

    @property
    def nbytes(self) -> int:
        """Bytes the thread's caches occupy (one full-context cache)."""
        return cache_nbytes(self.caches[self.context])

    def holding(self, kept: Any, tokens: int) -> StaticCache:
        """The thread's cache with room for ``tokens``, emptied, then holding what ``kept`` holds (if given)."""
        size = static_capacity(tokens, self.context)
        if size not in self.caches:
            raise ValueError(f"{tokens} tokens do not fit the context of {self.context}")
        cache = self.caches[size]
        cache.reset()
        if kept is not None and cached_tokens(kept):
            copy_prefix(kept, cached_tokens(kept), cache)
        return cache


def _leading_view(buffer: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The first elements of ``buffer`` seen as a tensor of ``shape``, marked as a static address."""
    view = buffer.view(-1)[: math.prod(shape)].view(shape)
    torch._dynamo.mark_static_address(view)
    return view


def compact_copy(cache: StaticCache, config: Any) -> Any:
    """What ``cache`` holds, copied into a growing cache of its own (for the pool of kept conversations)."""
    return copy_prefix(cache, cached_tokens(cache), new_cache(config))


def compile_blocker(model: Any) -> str | None:
    """Why compiled decoding cannot keep one recorded graph per cache size for ``model``, or None.

    Sliding-window layers: transformers' static sliding layers count tokens in a Python int (a
    guard that changes every step) and roll their buffer past the window, so neither one graph
    per size nor the copying in and out holds. Weights over several devices: CUDA graphs are
    recorded on one device only. Quantized weights that transformers cannot compile (bitsandbytes).
    """
    if any(layer.is_sliding for layer in StaticCache(config=model.config, max_cache_len=STATIC_STEP_TOKENS).layers):
        return "スライディングウィンドウのあるモデル / a model with sliding-window attention layers"
    if len(set(getattr(model, "hf_device_map", {}).values())) > 1:
        return "重みが複数のデバイスに分かれています / the weights are spread over several devices"
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and not quantizer.is_compileable:
        return "この量子化の重みはコンパイルできません / these quantized weights cannot be compiled"
    return None


@functools.cache
def compile_config() -> CompileConfig:
    """``generate()``'s compile settings, one object: transformers' defaults, on any device (by
    itself it compiles only on accelerators)."""
    config = CompileConfig()
    config._compile_all_devices = True
    return config
