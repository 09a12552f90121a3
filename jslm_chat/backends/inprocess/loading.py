"""Loading a model: device and dtype placement, hub or local directory, clear load errors."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from jslm_chat.backends.inprocess import zerogpu
from jslm_chat.backends.inprocess.backend import DEFAULT_CACHE_SLOTS, InProcessBackend, Placement
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
) -> InProcessBackend:
    """Load a model by preset key, hub id or local directory (``compiled``: decode with a static
    cache and ``torch.compile``). Raises :class:`ModelLoadError`."""
    preset = resolve_preset(model)
    if display_name:
        preset = dataclasses.replace(preset, display_name=display_name)
    source = preset.model_id
    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as error:
        raise ModelLoadError(describe_load_failure(source, error)) from error
    parameters = estimate_parameters(config)
    placement = choose_placement(device, dtype, parameters)
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
        tokenizer = AutoTokenizer.from_pretrained(source)
        loaded = AutoModelForCausalLM.from_pretrained(source, dtype=placement.dtype, device_map=placement.device_map)
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
        "loaded %s on %s (%s) in %.1f s",
        source,
        placement.device_label,
        dtype_name,
        time.perf_counter() - started,
    )
    return InProcessBackend(loaded, tokenizer, preset, placement, cache_slots=cache_slots, compiled=compiled)


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
