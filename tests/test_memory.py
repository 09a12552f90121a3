"""The memory budget's arithmetic on the 7B's exact configuration."""

from __future__ import annotations

from transformers import LlamaConfig, MistralConfig

from jslm_chat.backends.inprocess.memory import LLAMA2_7B, cache_bytes_per_token

SEVEN_B = LlamaConfig(**LLAMA2_7B)


def test_the_7b_cache_takes_half_a_mebibyte_per_token_in_float16():
    assert cache_bytes_per_token(SEVEN_B, 2) == 512 * 1024
    assert cache_bytes_per_token(SEVEN_B, 2) * 4096 == 2 * 1024**3


def test_grouped_query_attention_counts_only_the_key_value_heads():
    config = MistralConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8)
    assert cache_bytes_per_token(config, 2) == 128 * 1024
