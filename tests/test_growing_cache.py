"""The growing cache: the same logits as transformers' DynamicCache, without a copy per token."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig, MistralConfig

from jslm_chat.backends.inprocess.growing_cache import EXACT_FIT_TOKENS, GROW_STEP_TOKENS, GrowingLayer, new_cache


@pytest.fixture(scope="module")
def model(demo_model_path):
    return AutoModelForCausalLM.from_pretrained(demo_model_path, dtype=torch.float32).eval()


def logits_in_chunks(model, token_ids: list[int], cache, chunks: list[int]) -> torch.Tensor:
    """The logits of every token, fed to the model in pieces of the given sizes (one at a time after them)."""
    outputs, start = [], 0
    with torch.inference_mode():
        for size in [*chunks, *[1] * (len(token_ids) - sum(chunks))]:
            piece = torch.tensor([token_ids[start : start + size]])
            outputs.append(model(input_ids=piece, cache=cache).logits[0])
            start += size
    return torch.cat(outputs)


def test_growing_cache_gives_the_logits_of_a_dynamic_cache(model):
    token_ids = [(index * 37) % 2900 + 5 for index in range(700)]
    chunks = [300, 250]  # a prefill past the first step, then 150 single-token steps over the next
    expected = logits_in_chunks(model, token_ids, DynamicCache(config=model.config), chunks)
    cache = new_cache(model.config)
    got = logits_in_chunks(model, token_ids, cache, chunks)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert cache.get_seq_length() == 700
    assert {layer.capacity for layer in cache.layers} == {2 * GROW_STEP_TOKENS}


def test_a_long_cache_is_copied_once_per_step_not_per_token():
    layer = GrowingLayer()
    buffers = set()
    for _ in range(3 * GROW_STEP_TOKENS):
        keys, values = layer.update(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4))
        assert keys.shape[-2] == values.shape[-2] == layer.get_seq_length() <= layer.capacity
        if layer.get_seq_length() <= EXACT_FIT_TOKENS:  # short: a compact tensor, as transformers makes
            assert keys.is_contiguous() and layer.capacity == layer.get_seq_length()
        else:
            buffers.add(keys.untyped_storage().data_ptr())
            assert layer.capacity - layer.get_seq_length() < GROW_STEP_TOKENS
    assert len(buffers) == 3  # room for 512, 1,024 and 1,536 tokens


def test_crop_keeps_the_prefix_and_the_next_tokens_overwrite_the_rest():
    layer = GrowingLayer()
    first = torch.randn(1, 2, 10, 4)
    layer.update(first, first * 2)
    layer.crop(-4)
    assert layer.get_seq_length() == 6
    second = torch.randn(1, 2, 3, 4)
    keys, values = layer.update(second, second * 2)
    torch.testing.assert_close(keys, torch.cat([first[..., :6, :], second], dim=-2), rtol=0, atol=0)
    torch.testing.assert_close(values, keys * 2, rtol=0, atol=0)
    with pytest.raises(ValueError):
        layer.crop(2)


def test_only_full_attention_layers_grow():
    small = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2}
    assert {type(layer) for layer in new_cache(LlamaConfig(**small)).layers} == {GrowingLayer}
    sliding = new_cache(MistralConfig(**small, sliding_window=64)).layers
    assert GrowingLayer not in {type(layer) for layer in sliding} and len(sliding) == 2
