"""--quantize: the memory budget per card, the weights' bytes against real bitsandbytes, the refusals."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig

from jslm_chat.backends.inprocess import loading
from jslm_chat.backends.inprocess.loading import bitsandbytes_config, load_inprocess_backend
from jslm_chat.backends.inprocess.memory import LLAMA2_7B
from jslm_chat.backends.inprocess.quantization import (
    GIB,
    QUANTIZE_CHOICES,
    MemoryTooSmallError,
    choose_quantization,
    needed_bytes,
    resident_bytes,
    weight_bytes,
)
from jslm_chat.server import StartupError, load_for, serve
from jslm_chat.settings import QUANTIZE_CHOICES as FLAG_CHOICES
from jslm_chat.settings import Settings, parse_settings

ROOT = Path(__file__).resolve().parent.parent
LLAMA_7B = LlamaConfig(**LLAMA2_7B)

# Free memory as torch.cuda.mem_get_info reports it once the CUDA context is up (about 0.4 GiB less than the card).
CARDS = [
    # card, free GiB, mode auto picks, context it keeps
    ("A10G 24 GB", 21.9, "none", 4096),
    ("T4 16 GB", 14.5, "int8", 4096),
    ("RTX 3060 12 GB", 11.2, "int8", 4096),
    ("RTX 4060 8 GB", 7.2, "nf4", 4096),
    ("6 GB laptop GPU", 5.4, "nf4", 1536),
]


@pytest.mark.parametrize(("card", "free_gib", "mode", "context"), CARDS)
def test_auto_picks_the_best_mode_that_fits_the_card(card, free_gib, mode, context):
    plan = choose_quantization("auto", {0: int(free_gib * GIB)}, LLAMA_7B, 4096)
    assert (plan.mode, plan.context, plan.gpu, plan.max_memory) == (mode, context, 0, None), card
    assert f"auto → {mode} on GPU 0" in plan.reason
    for shown in ("none 15.6 GiB", "int8 9.5 GiB", "nf4 6.6 GiB", f"GPU 0 {free_gib:.1f} GiB"):
        assert shown in plan.reason  # the log line names the free memory and what each mode needs


def test_off_cuda_auto_means_none_and_an_explicit_mode_is_kept():
    assert choose_quantization("auto", {}, LLAMA_7B, 4096).mode == "none"
    assert choose_quantization("nf4", {}, LLAMA_7B, 4096).mode == "nf4"


def test_a_card_too_small_even_for_nf4_gets_the_numbers_and_the_fixes():
    with pytest.raises(MemoryTooSmallError) as caught:
        choose_quantization("auto", {0: int(3.6 * GIB)}, LLAMA_7B, 4096)
    message = str(caught.value)
    assert "空き 3.6 GiB" in message and "3.6 GiB free" in message and "nf4 needs 6.6 GiB" in message
    assert "--device cpu" in message and "--backend vllm" in message and "docs/quantization.md" in message


def test_an_explicit_mode_that_does_not_fit_is_refused_rather_than_swapped():
    with pytest.raises(MemoryTooSmallError, match="load in 4 bits with --quantize nf4"):
        choose_quantization("none", {0: 8 * GIB}, LLAMA_7B, 4096)
    assert choose_quantization("int8", {0: int(8.5 * GIB)}, LLAMA_7B, 4096).context == 1792  # shorter, same mode


def test_one_gpu_when_it_fits_else_spread_with_room_left_for_the_caches():
    one = choose_quantization("auto", {0: 10 * GIB, 1: 20 * GIB}, LLAMA_7B, 4096)
    assert (one.mode, one.gpu, one.max_memory) == ("none", 1, None)  # the GPU with the most free memory
    spread = choose_quantization("auto", {0: 10 * GIB, 1: 10 * GIB}, LLAMA_7B, 4096)
    assert (spread.mode, spread.gpu) == ("none", None) and "over 2 GPUs" in spread.reason
    assert weight_bytes(LLAMA_7B, "none") <= sum(spread.max_memory.values()) <= 20 * GIB - 3 * GIB


def test_the_7b_weights_per_mode():
    assert weight_bytes(LLAMA_7B, "none") == 6_738_415_616 * 2  # Llama-2 7B's parameters in float16
    assert 6.5 * GIB < weight_bytes(LLAMA_7B, "int8") < 6.6 * GIB
    assert 3.55 * GIB < weight_bytes(LLAMA_7B, "nf4") < 3.65 * GIB
    assert needed_bytes(LLAMA_7B, "none", 4096) - weight_bytes(LLAMA_7B, "none") == 3 * GIB  # 2 GiB cache + margin


def test_a_sliding_window_bounds_the_cache_and_grouped_query_attention_shrinks_it():
    gamma = MistralConfig(**{**LLAMA2_7B, "num_key_value_heads": 8, "max_position_embeddings": 32768})
    assert needed_bytes(gamma, "nf4", 32768) == needed_bytes(gamma, "nf4", 4096)  # the window is 4,096
    assert needed_bytes(gamma, "nf4", 4096) - weight_bytes(gamma, "nf4") == GIB // 2 + GIB


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """A random Llama with grouped-query attention, saved in float16 like a hub checkpoint."""
    config = LlamaConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=1000,
    )  # fmt: skip
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("gqa_llama")
    LlamaForCausalLM(config).to(torch.float16).save_pretrained(directory)
    return directory, config


@pytest.mark.parametrize("mode", ["none", "int8", "nf4"])
def test_the_predicted_bytes_are_what_bitsandbytes_allocates(small_checkpoint, mode):
    directory, config = small_checkpoint
    model = AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float16, quantization_config=bitsandbytes_config(mode, torch.float16)
    )
    measured = resident_bytes(model)
    assert abs(measured - weight_bytes(config, mode)) < 0.01 * measured
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight.dtype == torch.float16  # kept
    assert model.model.embed_tokens.weight.dtype == torch.float16


def test_each_mode_takes_less_memory_than_the_unquantized_demo_model(demo_model_path):
    def loaded(mode: str) -> object:
        return load_inprocess_backend(str(demo_model_path), device="cpu", dtype="float16", quantize=mode).model

    sizes = {mode: resident_bytes(loaded(mode)) for mode in ("none", "int8", "nf4")}
    assert sizes["nf4"] < sizes["int8"] < sizes["none"]


def test_the_flag_and_its_environment_variable():
    assert Settings().quantize == "auto"
    assert parse_settings([], {"JSLM_QUANTIZE": "nf4"}).quantize == "nf4"
    assert parse_settings(["--quantize", "int8"], {"JSLM_QUANTIZE": "nf4"}).quantize == "int8"
    assert FLAG_CHOICES == QUANTIZE_CHOICES  # settings may not import the backends: declared twice, kept equal
    with pytest.raises(SystemExit):
        parse_settings(["--quantize", "int4"], {})


def test_quantize_with_vllm_is_refused_with_the_fix():
    with pytest.raises(StartupError, match=r"--quantize nf4 does not apply with --backend vllm.*AWQ/GPTQ"):
        load_for(Settings(backend="vllm", quantize="nf4"))


def test_compile_with_an_explicit_quantized_mode_is_refused(demo_model_path):
    with pytest.raises(StartupError, match=r"--compile does not work with --quantize int8"):
        load_for(Settings(demo=True, quantize="int8", compile=True))


def test_int8_computes_in_float16_only(demo_model_path):
    with pytest.raises(StartupError, match=r"int8 \(LLM.int8\) computes in float16 only: drop --dtype float32"):
        load_for(Settings(demo=True, quantize="int8", dtype="float32"))
    nf4 = load_for(Settings(demo=True, quantize="nf4", dtype="float32"))
    assert nf4.runs_on == "cpu · float32 · nf4"


def test_without_bitsandbytes_an_explicit_mode_is_refused_at_start(demo_model_path):
    script = (
        "import sys; sys.modules['bitsandbytes'] = None\n"  # as if it were not installed
        "from jslm_chat.server import serve\n"
        "raise SystemExit(serve(['--demo', '--quantize', 'nf4']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "pip install bitsandbytes" in done.stderr and "--quantize none" in done.stderr
    assert "Traceback" not in done.stderr


def test_quantize_on_zerogpu_is_refused_and_auto_is_none(monkeypatch):
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    placement = loading.choose_placement("cuda")
    with pytest.raises(loading.QuantizationRefused, match="remove --quantize"):
        loading.plan_placement(placement, LLAMA_7B, "int8", 4096, "auto")
    kept, plan = loading.plan_placement(placement, LLAMA_7B, "auto", 4096, "auto")
    assert (plan.mode, kept) == ("none", placement)


@pytest.fixture
def one_gpu(monkeypatch):
    """A machine with one CUDA GPU whose free memory the test sets (this machine has none)."""
    free = {"bytes": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=0: (free["bytes"], 16 * GIB))
    return free


def test_on_a_t4_the_7b_goes_to_gpu_0_in_int8_and_the_log_says_why(one_gpu, caplog):
    one_gpu["bytes"] = int(14.5 * GIB)
    with caplog.at_level(logging.INFO, logger=loading.__name__):
        placement, plan = loading.plan_placement(loading.choose_placement(), LLAMA_7B, "auto", 4096, "auto")
    assert (placement.device_map, placement.quantization, placement.dtype) == ({"": "cuda:0"}, "int8", torch.float16)
    assert placement.device_label == "cuda"
    assert [record.getMessage() for record in caplog.records] == [f"weights int8 ({plan.reason})"]


def test_a_card_too_small_ends_the_app_with_status_1_and_one_message(one_gpu, tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", **LLAMA2_7B}))
    one_gpu["bytes"] = 3 * GIB
    assert serve(["--model", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert "GPU のメモリが足りません" in error and "Not enough GPU memory: 3.0 GiB free" in error


def test_compile_is_turned_off_with_a_warning_when_auto_picks_a_quantized_mode(caplog):
    with caplog.at_level(logging.WARNING, logger=loading.__name__):
        assert loading.compile_allowed(True, "auto", "nf4") is False
    assert [record.getMessage() for record in caplog.records][-1].endswith("--compile is off with nf4 weights.")
    assert loading.compile_allowed(True, "auto", "none") is True
