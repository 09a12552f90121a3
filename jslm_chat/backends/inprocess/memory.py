"""One memory budget for the in-process model: what the weights and the attention caches take."""

from __future__ import annotations

from typing import Any


def key_value_shape(config: Any) -> tuple[int, int]:
    """The key/value heads of one attention layer and the width of each (grouped-query attention counted)."""
    text = getattr(config, "text_config", None) or config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return kv_heads, getattr(text, "head_dim", None) or text.hidden_size // heads


def cache_bytes_per_token(config: Any, dtype_bytes: int) -> int:
    """Bytes one token's keys and values take in the attention cache, over every layer.

    The 7B (32 layers, 32 key/value heads of 128) in float16: 0.5 MiB per token.
    """
    kv_heads, head_dim = key_value_shape(config)
    layers = (getattr(config, "text_config", None) or config).num_hidden_layers
    return 2 * layers * kv_heads * head_dim * dtype_bytes


LLAMA2_7B = {
    "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
}  # fmt: skip
"""The shape of the Llama-2 7B (japanese-stablelm-instruct-beta-7b): the model the budgets are planned
and measured for (a ``LlamaConfig``'s arguments)."""
WORKING_MARGIN_BYTES = 1 << 30
"""Memory kept free beside the weights and the caches: activations of a prefill chunk, the CUDA
allocator's slack, CUDA graphs, bitsandbytes' work buffers (the one margin of every budget)."""


def cache_pool_budget(
    free_bytes: int, total_bytes: int, bytes_per_token: int, context_tokens: int, running_replies: int = 1
) -> int:
    """Bytes the pool of kept conversation caches may hold on a GPU with ``free_bytes`` free after
    loading: what is left once every running reply has room for a full-context cache and a working
    margin (1 GiB, or 5% of the card if more) is kept free.

    The 7B in float16 on a 24 GB card (about 10 GiB free): 10 - 2 - 1.2 = 6.8 GiB, some 13,900 tokens.
    """
    margin = max(WORKING_MARGIN_BYTES, total_bytes // 20)
    return max(0, free_bytes - running_replies * bytes_per_token * context_tokens - margin)
