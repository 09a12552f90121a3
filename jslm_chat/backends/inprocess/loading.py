"""Loading a model: device and dtype placement, hub or local directory, clear load errors."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from jslm_chat.backends.hub import local_files_only
from jslm_chat.backends.inprocess import zerogpu
from jslm_chat.backends.inprocess.backend import DEFAULT_CACHE_SLOTS, InProcessBackend, Placement
from jslm_chat.backends.inprocess.quantization import MemoryPlan, MemoryTooSmallError, choose_quantization
from jslm_chat.model.presets import resolve_preset

logger = logging.getLogger(__name__)

DTYPES = ("auto", "float16", "bfloat16", "float32")
"""The weight dtypes this loader knows (``settings.DTYPE_CHOICES`` offers the same)."""
SMALL_MODEL_PARAMETERS = 1_000_000_000
LOAD_FIXES = (
    "対処: ローカルに保存したモデルを --model PATH で指定するか、--demo でオフラインのデモモデルを使ってください。"
    " / Fix: point --model PATH at a local copy of the model, or run with --demo for the offline demo model."
)


class ModelLoadError(RuntimeError):
    """The model or tokenizer could not be loaded; the message names the cause and the fixes."""


class QuantizationRefused(ModelLoadError):
    """The ``--quantize`` asked for cannot work here; the message names the fix."""


def choose_placement(device: str = "auto", dtype: str = "auto", parameters: int | None = None) -> Placement:
    """Pick device and dtype: fp16 over all GPUs when CUDA is there, else CPU in bf16 or fp32.

    ``device`` is one of ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``; ``dtype`` one of
    ``auto``, ``float16``, ``bfloat16``, ``float32``. Explicit values win over the defaults. On CPU,
    ``auto`` is bfloat16 where the CPU supports it natively, to halve the memory of a 7B model;
    a model known to have fewer than a billion ``parameters`` stays in float32, which is faster.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(
                "CUDA の GPU が見つかりません。--device cpu を指定するか、GPU のある環境で実行してください。"
                " / No CUDA GPU is available: use --device cpu or run on a machine with a GPU."
            )
        chosen = torch.float16 if dtype == "auto" else getattr(torch, dtype)
        count = torch.cuda.device_count()
        if device == "cuda" and zerogpu.enabled():
            # ZeroGPU attaches one GPU per call; load on the CPU, then move on the main thread.
            return Placement(None, chosen, "cuda (ZeroGPU)", then_move_to="cuda")
        if device == "cuda":
            return Placement("auto", chosen, f"cuda ×{count}" if count > 1 else "cuda")
        return Placement({"": device}, chosen, device)
    if device == "mps":
        return Placement({"": "mps"}, torch.float16 if dtype == "auto" else getattr(torch, dtype), "mps")
    if device != "cpu":
        raise ValueError(f"unknown device {device!r}; choose one of auto, cpu, cuda, cuda:N, mps")
    if dtype != "auto":
        return Placement(None, getattr(torch, dtype), "cpu")
    small = parameters is not None and parameters < SMALL_MODEL_PARAMETERS
    return Placement(None, torch.float32 if small or not cpu_supports_bfloat16() else torch.bfloat16, "cpu")


def estimate_parameters(config: Any) -> int | None:
    """Roughly how many weights a Llama-like config describes (attention, MLP, embeddings)."""
    try:
        hidden, layers = int(config.hidden_size), int(config.num_hidden_layers)
        intermediate, vocab = int(config.intermediate_size), int(config.vocab_size)
    except (AttributeError, TypeError, ValueError):
        return None
    return layers * (4 * hidden * hidden + 3 * hidden * intermediate) + 2 * vocab * hidden


def cpu_supports_bfloat16() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (AVX512-BF16/AMX, or Arm BF16)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def load_inprocess_backend(
    model: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    display_name: str | None = None,
    cache_slots: int = DEFAULT_CACHE_SLOTS,
    compiled: bool = False,
    quantize: str = "auto",
    concurrency: int = 1,
) -> InProcessBackend:
    """Load a model by preset key, hub id or local directory (``compiled``: decode with a static
    cache and ``torch.compile``; ``quantize``: auto, none, int8 or nf4; ``concurrency``: replies at once).
    Raises :class:`ModelLoadError`."""
    preset = resolve_preset(model)
    if display_name:
        preset = dataclasses.replace(preset, display_name=display_name)
    source = preset.model_id
    offline = local_files_only(source)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
    except Exception as error:
        raise ModelLoadError(describe_load_failure(source, error)) from error
    parameters = estimate_parameters(config)
    context = min(preset.context_length, getattr(config, "max_position_embeddings", None) or preset.context_length)
    placement, plan = plan_placement(choose_placement(device, dtype, parameters), config, quantize, context, dtype)
    compiled = compile_allowed(compiled, quantize, plan.mode)
    if plan.context < preset.context_length:
        preset = preset.fitted_to_context(plan.context)
    dtype_name = placement.dtype_name
    if placement.device_label == "cpu" and (parameters is None or parameters >= SMALL_MODEL_PARAMETERS):
        logger.warning(
            "GPU なしで CPU (%s) で実行します。7B モデルの生成はとても遅くなります（1 秒に数トークン）。"
            " / Running on CPU (%s): a 7B model generates very slowly (a few tokens a second).",
            dtype_name,
            dtype_name,
        )
    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        loaded = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=placement.dtype,
            device_map=placement.device_map,
            max_memory=placement.max_memory,
            quantization_config=bitsandbytes_config(plan.mode, placement.dtype),
            local_files_only=offline,
        )
        if placement.then_move_to:
            # transformers loads in a thread pool, where ZeroGPU's patched torch cannot reach CUDA.
            loaded.to(placement.then_move_to)
    except Exception as error:
        raise ModelLoadError(describe_load_failure(source, error)) from error
    loaded.eval()
    configured_length = getattr(loaded.config, "max_position_embeddings", None)
    if isinstance(configured_length, int) and 0 < configured_length < preset.context_length:
        preset = preset.fitted_to_context(configured_length)
    logger.info(
        "loaded %s on %s (%s%s) in %.1f s",
        source,
        placement.device_label,
        dtype_name,
        "" if plan.mode == "none" else f", {plan.mode}",
        time.perf_counter() - started,
    )
    return InProcessBackend(
        loaded, tokenizer, preset, placement, cache_slots=cache_slots, compiled=compiled, concurrency=concurrency
    )


def gpu_free_bytes(placement: Placement) -> dict[int, int]:
    """Free bytes of each GPU the placement may use (all for ``cuda``, one for ``cuda:N``); none off CUDA."""
    if not placement.device_label.startswith("cuda") or placement.then_move_to:
        return {}
    if isinstance(placement.device_map, dict):
        indices = [torch.device(placement.device_map[""]).index or 0]
    else:
        indices = list(range(torch.cuda.device_count()))
    return {index: torch.cuda.mem_get_info(index)[0] for index in indices}


def plan_placement(
    placement: Placement, config: Any, quantize: str, context: int, dtype: str
) -> tuple[Placement, MemoryPlan]:
    """The placement refined by the memory budget: the weight mode, one GPU or a spread, in one log line.

    Raises :class:`QuantizationRefused` or :class:`ModelLoadError` (too little memory).
    """
    if quantize in ("int8", "nf4") and placement.then_move_to:
        raise QuantizationRefused(
            "ZeroGPU では --quantize を使えません（H200 の一部で 7B を float16 のまま動かします）。"
            "対処: --quantize と JSLM_QUANTIZE を外してください。"
            " / --quantize does not apply on ZeroGPU (its H200 slice holds the 7B in float16):"
            " remove --quantize / JSLM_QUANTIZE."
        )
    free = gpu_free_bytes(placement)
    try:
        plan = choose_quantization(quantize, free, config, context)
    except MemoryTooSmallError as error:
        raise ModelLoadError(str(error)) from error
    logger.info("weights %s (%s)", plan.mode, plan.reason)
    if plan.mode != "none":
        require_bitsandbytes(plan.mode)
        placement = dataclasses.replace(placement, quantization=plan.mode, dtype=quantized_dtype(plan.mode, dtype))
    if plan.gpu is not None:
        label = "cuda" if torch.cuda.device_count() == 1 else f"cuda:{plan.gpu}"
        placement = dataclasses.replace(placement, device_map={"": f"cuda:{plan.gpu}"}, device_label=label)
    elif plan.max_memory:
        placement = dataclasses.replace(placement, device_map="auto", max_memory=dict(plan.max_memory))
    return placement, plan


def quantized_dtype(mode: str, dtype: str) -> torch.dtype:
    """The dtype of the unquantized weights and of the computation: float16 unless ``--dtype`` says
    otherwise (LLM.int8 computes in float16 only)."""
    if dtype == "auto" or dtype == "float16":
        return torch.float16
    if mode == "int8":
        raise QuantizationRefused(
            f"--quantize int8 は float16 でのみ計算します。--dtype {dtype} を外すか、--quantize nf4 を使ってください。"
            f" / --quantize int8 (LLM.int8) computes in float16 only: drop --dtype {dtype}, or use --quantize nf4."
        )
    return getattr(torch, dtype)


def require_bitsandbytes(mode: str) -> None:
    """Refuse ``mode`` with the fix when bitsandbytes cannot be imported."""
    try:
        importlib.import_module("bitsandbytes")
    except ImportError as error:
        raise QuantizationRefused(
            f"{mode} の読み込みには bitsandbytes が必要です ({error})。"
            "対処: pip install bitsandbytes を実行するか、--quantize none で量子化せずに読み込んでください。"
            f" / Loading in {mode} needs bitsandbytes ({error}):"
            " run pip install bitsandbytes, or load unquantized with --quantize none."
        ) from error


def compile_allowed(compiled: bool, quantize: str, mode: str) -> bool:
    """Whether to compile: not with bitsandbytes weights (refused when asked for, off with a warning for auto)."""
    if not compiled or mode == "none":
        return compiled
    if quantize != "auto":
        raise QuantizationRefused(
            f"--compile と --quantize {mode} は同時に使えません。どちらか一方を外してください。"
            f" / --compile does not work with --quantize {mode} (bitsandbytes layers): drop one of the two."
        )
    logger.warning(
        "--compile は %s の重みでは使いません（通常のデコードで動かします）。 / --compile is off with %s weights.",
        mode,
        mode,
    )
    return False


def bitsandbytes_config(mode: str, compute_dtype: torch.dtype) -> Any:
    """transformers' ``quantization_config`` for ``mode``: LLM.int8, or nf4 with double quantization;
    the embeddings and the output layer stay unquantized. None for ``none``."""
    if mode == "none":
        return None
    from transformers import BitsAndBytesConfig

    if mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=True,
    )


def describe_load_failure(source: str, error: BaseException) -> str:
    """One clear, bilingual message naming why ``source`` failed to load and how to fix it."""
    text = str(error)
    lowered = text.lower()
    looks_like_path = source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source
    if looks_like_path and not Path(source).expanduser().exists():
        cause = f"フォルダ {source} が見つかりません。 / The folder {source} does not exist."
    elif isinstance(error, (MemoryError, torch.OutOfMemoryError)) or ("memory" in lowered and "allocat" in lowered):
        cause = (
            "メモリが足りません。GPU を使うか、--dtype float16 / bfloat16 を試してください。"
            " / Not enough memory: use a GPU, or try --dtype float16 / bfloat16."
        )
    elif isinstance(error, ImportError):
        cause = f"必要なパッケージがありません: {text} / A required package is missing: {text}"
    elif "couldn't connect" in lowered or "offline" in lowered or "connection" in lowered:
        cause = (
            f"{source} をダウンロードできません（ネットワークに接続できず、キャッシュにもありません）。"
            f" / Cannot download {source}: no network connection and no cached copy."
        )
    elif Path(source).expanduser().is_dir():
        cause = (
            f"フォルダ {source} にモデルまたはトークナイザーのファイルがありません: {text}"
            f" / The folder {source} holds no loadable model or tokenizer: {text}"
        )
    else:
        cause = f"{source} を読み込めません: {text} / Cannot load {source}: {text}"
    return f"モデルを読み込めませんでした / Could not load the model.\n{cause}\n{LOAD_FIXES}"
