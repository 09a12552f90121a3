"""Loading: device and dtype placement, local directories, and clear load errors."""

from __future__ import annotations

import pytest
import torch

from jslm_chat.backends.inprocess import loading
from jslm_chat.backends.inprocess.loading import (
    ModelLoadError,
    choose_placement,
    describe_load_failure,
    estimate_parameters,
    load_inprocess_backend,
)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return load_inprocess_backend(str(tiny_model_dir), device="cpu", dtype="float32")


def test_loads_a_local_directory_on_cpu(engine, tiny_model_dir):
    assert engine.placement.device_label == "cpu"
    assert engine.placement.dtype_name == "float32"
    assert engine.runs_on == "cpu · float32"
    assert engine.model.dtype == torch.float32
    assert not engine.model.training
    assert engine.preset.prompt_format == "llama2"
    assert engine.context_length == 512  # fitted to the model's config
    assert engine.preset.sampling.max_new_tokens == 128


def test_placement_on_cpu_and_explicit_dtype():
    assert choose_placement("cpu", "float32").dtype == torch.float32
    assert choose_placement("cpu", "float32").device_map is None
    assert choose_placement("cpu").dtype in (torch.bfloat16, torch.float32)
    with pytest.raises(ValueError):
        choose_placement("cpu", "int3")


def test_cpu_auto_dtype_is_bfloat16_for_big_models_where_supported(monkeypatch):
    seven_b = 6_700_000_000
    monkeypatch.setattr(loading, "cpu_supports_bfloat16", lambda: True)
    assert choose_placement("cpu", parameters=seven_b).dtype == torch.bfloat16
    assert choose_placement("cpu", parameters=10_000_000).dtype == torch.float32  # small: fp32 is faster
    monkeypatch.setattr(loading, "cpu_supports_bfloat16", lambda: False)
    assert choose_placement("cpu", parameters=seven_b).dtype == torch.float32


def test_parameter_estimate_matches_a_llama_2_7b_config():
    from transformers import LlamaConfig

    from jslm_chat.backends.inprocess.memory import LLAMA2_7B

    config = LlamaConfig(**LLAMA2_7B)
    assert 6.6e9 < estimate_parameters(config) < 6.8e9
    assert estimate_parameters(object()) is None


def test_tiny_model_on_auto_loads_in_float32(tiny_model_dir):
    assert load_inprocess_backend(str(tiny_model_dir), device="cpu").placement.dtype_name == "float32"


def test_placement_with_cuda_is_fp16_over_every_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    auto = choose_placement()
    assert (auto.device_map, auto.dtype, auto.device_label) == ("auto", torch.float16, "cuda ×2")
    pinned = choose_placement("cuda:1", "bfloat16")
    assert (pinned.device_map, pinned.dtype) == ({"": "cuda:1"}, torch.bfloat16)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")  # loaded on the CPU, then moved to the one GPU on the main thread
    zero = choose_placement()
    assert (zero.device_map, zero.then_move_to, zero.device_label) == (None, "cuda", "cuda (ZeroGPU)")
    monkeypatch.setenv("SPACES_ZERO_GPU", "false")  # spaces reads only 1/t/true as on
    assert choose_placement().device_map == "auto"


def test_asking_for_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelLoadError, match="--device cpu"):
        choose_placement("cuda")


def test_missing_local_folder_is_a_clear_load_error(tmp_path):
    with pytest.raises(ModelLoadError) as caught:
        load_inprocess_backend(str(tmp_path / "nowhere"), device="cpu")
    message = str(caught.value)
    assert "見つかりません" in message
    assert "does not exist" in message
    assert "--model PATH" in message
    assert "--demo" in message


def test_folder_without_a_model_is_a_clear_load_error(tmp_path):
    with pytest.raises(ModelLoadError) as caught:
        load_inprocess_backend(str(tmp_path), device="cpu")
    assert "no loadable model" in str(caught.value)


def test_hub_model_without_network_or_cache_is_a_clear_load_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as caught:
        load_inprocess_backend("stabilityai/japanese-stablelm-instruct-beta-7b", device="cpu")
    message = str(caught.value)
    assert "no network connection and no cached copy" in message
    assert "--demo" in message


def test_memory_failures_are_named_as_such():
    message = describe_load_failure("some/model", MemoryError("DefaultCPUAllocator: can't allocate memory"))
    assert "メモリが足りません" in message
    assert "Not enough memory" in message


def test_cpu_slowness_warning_only_for_big_models(tiny_model_dir, caplog, monkeypatch):
    with caplog.at_level("WARNING", logger="jslm_chat.backends.inprocess.loading"):
        load_inprocess_backend(str(tiny_model_dir), device="cpu")
    assert "very slowly" not in caplog.text
    monkeypatch.setattr(loading, "estimate_parameters", lambda config: 6_700_000_000)
    with caplog.at_level("WARNING", logger="jslm_chat.backends.inprocess.loading"):
        load_inprocess_backend(str(tiny_model_dir), device="cpu", dtype="float32")
    assert "very slowly" in caplog.text
    assert "とても遅く" in caplog.text
