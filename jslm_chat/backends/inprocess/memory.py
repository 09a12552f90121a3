"""One memory budget for the in-process model: what the weights and the attention caches take."""

from __future__ import annotations

from typing import Any


def cache_bytes_per_token(config: Any, dtype_bytes: int) -> int:
    """Bytes one token's keys and values take in the attention cache, over every layer.

    The 7B (32 layers, 32 key/value heads of 128) in float16: 0.5 MiB per token.
    """
    text = getattr(config, "text_config", None) or config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return 2 * text.num_hidden_layers * kv_heads * head_dim * dtype_bytes
