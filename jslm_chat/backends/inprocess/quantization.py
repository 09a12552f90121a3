"""The memory budget of one card: what each weight mode takes, and which mode ``--quantize auto`` picks.

Pure arithmetic on the model's config and the free memory of each GPU (no torch here), so the
choice is testable for any card. A mode *fits* a GPU when its weights, the attention cache of one
full-context conversation and ``memory.WORKING_MARGIN_BYTES`` (activations, the CUDA allocator's slack,
bitsandbytes' work buffers) fit that GPU's free memory. ``auto`` takes the first of float16, int8
and nf4 that fits one GPU, else that fits all GPUs together (spread, with room left on each for
the caches), else nf4 with the longest context that fits (at least :data:`MIN_CONTEXT` tokens).
Off CUDA (CPU, Apple GPUs, ZeroGPU) ``auto`` means ``none``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jslm_chat.backends.inprocess.memory import WORKING_MARGIN_BYTES, cache_bytes_per_token
from jslm_chat.model.errors import UserError

QUANTIZE_CHOICES = ("auto", "none", "int8", "nf4")
"""What ``--quantize`` accepts (``settings`` offers the same)."""
LOADED_MODES = ("none", "int8", "nf4")
"""The weight modes, best quality first: the order ``auto`` tries them in."""
GIB = 1024**3
MIN_CONTEXT = 1024
CONTEXT_STEP = 256  # a context cut to fit is a multiple of this
HALF_BYTES = 2  # float16: the weights that stay unquantized, the caches
NF4_BLOCK = 64  # bitsandbytes' 4-bit block: one absmax per 64 weights
NF4_NESTED_BLOCK = 256  # double quantization: the absmax values in 8 bits, one float32 scale per 256 of them


class MemoryTooSmallError(UserError):
    """Even nf4 with a short context does not fit the GPU; the message gives the numbers and the fixes."""


@dataclass(frozen=True)
class WeightCounts:
    """How many weights the decoder's linear layers hold (quantized), and how many stay in float16."""

    linear: int
    linear_rows: int  # output rows of those layers: LLM.int8 keeps one float32 scale per row
    kept: int  # embeddings, the output layer, the norms


def weight_counts(config: Any) -> WeightCounts:
    """The weights of a Llama/Mistral-style config (grouped-query attention and tied embeddings counted)."""
    text = getattr(config, "text_config", None) or config
    hidden, layers, vocab = text.hidden_size, text.num_hidden_layers, text.vocab_size
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    intermediate = text.intermediate_size
    q_and_o = 2 * heads * head_dim * hidden
    k_and_v = 2 * kv_heads * head_dim * hidden
    per_layer = q_and_o + k_and_v + 3 * hidden * intermediate
    embeddings = vocab * hidden * (1 if getattr(text, "tie_word_embeddings", False) else 2)
    rows = heads * head_dim + 2 * kv_heads * head_dim + hidden + 2 * intermediate + hidden  # q k v o, gate up down
    return WeightCounts(layers * per_layer, layers * rows, embeddings + (2 * layers + 1) * hidden)


def weight_bytes(config: Any, mode: str) -> int:
    """Bytes the weights take in ``mode`` (``none`` is float16), quantization state included."""
    counts = weight_counts(config)
    kept = counts.kept * HALF_BYTES
    if mode == "none":
        return kept + counts.linear * HALF_BYTES
    if mode == "int8":
        return kept + counts.linear + 4 * counts.linear_rows
    if mode == "nf4":
        blocks = -(-counts.linear // NF4_BLOCK)
        return kept + counts.linear // 2 + blocks + 4 * -(-blocks // NF4_NESTED_BLOCK)
    raise ValueError(f"unknown weight mode {mode!r}; choose one of {', '.join(LOADED_MODES)}")


def cached_context(config: Any, context: int) -> int:
    """Tokens one conversation's cache holds at most: the context, or the sliding window if shorter."""
    window = getattr(getattr(config, "text_config", None) or config, "sliding_window", None)
    return min(context, window) if isinstance(window, int) and window > 0 else context


def needed_bytes(config: Any, mode: str, context: int) -> int:
    """Weights in ``mode`` + one conversation's float16 cache at ``context`` tokens + the margin."""
    cache = cache_bytes_per_token(config, HALF_BYTES) * cached_context(config, context)
    return weight_bytes(config, mode) + cache + WORKING_MARGIN_BYTES


@dataclass(frozen=True)
class MemoryPlan:
    """The chosen weight mode, where it goes, and the context it leaves room for."""

    mode: str
    context: int
    gpu: int | None = None  # the one GPU the model goes on; None: spread over ``max_memory`` or not CUDA
    max_memory: Mapping[int, int] | None = None  # per GPU, with room left for the caches (spread)
    reason: str = ""


def choose_quantization(requested: str, free: Mapping[int, int], config: Any, context: int) -> MemoryPlan:
    """The weight mode and placement for ``requested`` (``auto`` or a mode) given each GPU's free bytes.

    ``free`` maps GPU index → free bytes; empty off CUDA. Raises :class:`MemoryTooSmallError`.
    """
    if requested not in QUANTIZE_CHOICES:
        raise ValueError(f"unknown --quantize {requested!r}; choose one of {', '.join(QUANTIZE_CHOICES)}")
    modes = LOADED_MODES if requested == "auto" else (requested,)
    if not free:
        why = "auto → none: no CUDA GPU" if requested == "auto" else f"{requested} as asked; no CUDA GPU to budget"
        return MemoryPlan(modes[0], context, reason=why)
    needs = {mode: needed_bytes(config, mode, context) for mode in modes}
    summary = _summary(free, needs, context)
    best = max(free, key=lambda index: free[index])
    for mode in modes:
        if needs[mode] <= free[best]:
            return MemoryPlan(mode, context, gpu=best, reason=f"{requested} → {mode} on GPU {best}: {summary}")
        if len(free) > 1 and needs[mode] + WORKING_MARGIN_BYTES * (len(free) - 1) <= sum(free.values()):
            spread = _spread(free, needs[mode] - weight_bytes(config, mode))
            reason = f"{requested} → {mode} over {len(free)} GPUs: {summary}"
            return MemoryPlan(mode, context, max_memory=spread, reason=reason)
    last = modes[-1]
    per_token = cache_bytes_per_token(config, HALF_BYTES)
    room = free[best] - weight_bytes(config, last) - WORKING_MARGIN_BYTES
    fitting = room // per_token // CONTEXT_STEP * CONTEXT_STEP
    if fitting >= MIN_CONTEXT:
        fitted = int(min(context, fitting))
        reason = f"{requested} → {last} on GPU {best}, context cut to {fitted:,} tokens: {summary}"
        return MemoryPlan(last, fitted, gpu=best, reason=reason)
    raise MemoryTooSmallError(_too_small(free[best], last, needs[last], context))


def _spread(free: Mapping[int, int], cache_and_margin: int) -> dict[int, int]:
    """Each GPU's share of the weights: its free bytes less its share of the caches and a margin."""
    total = sum(free.values())
    return {index: int(bytes_ - cache_and_margin * bytes_ / total) for index, bytes_ in free.items()}


def _summary(free: Mapping[int, int], needs: Mapping[str, int], context: int) -> str:
    gpus = ", ".join(f"GPU {index} {bytes_ / GIB:.1f} GiB" for index, bytes_ in free.items())
    wanted = ", ".join(f"{mode} {bytes_ / GIB:.1f} GiB" for mode, bytes_ in needs.items())
    margin = f"{WORKING_MARGIN_BYTES / GIB:.0f} GiB margin"
    return f"free {gpus}; needed at {context:,} tokens (weights + cache + {margin}): {wanted}"


def _too_small(free: int, mode: str, needed: int, context: int) -> str:
    have, want = f"{free / GIB:.1f} GiB", f"{needed / GIB:.1f} GiB"
    smaller_ja = "" if mode == "nf4" else "--quantize nf4 で 4 ビットにする、"
    smaller_en = "" if mode == "nf4" else "load in 4 bits with --quantize nf4, "
    return (
        f"GPU のメモリが足りません: 空き {have}、{mode} では {context:,} トークンで {want} 必要です"
        f"（最短 {MIN_CONTEXT:,} トークンでも入りません）。"
        f"対処: {smaller_ja}他の GPU プロセスを終了する、メモリの大きい GPU を使う、--device cpu で CPU で動かす、"
        "または --backend vllm で量子化済み (AWQ/GPTQ) のモデルを使う（docs/quantization.md）。"
        f" / Not enough GPU memory: {have} free, {mode} needs {want} at {context:,} tokens"
        f" (and does not fit even at {MIN_CONTEXT:,} tokens)."
        f" Fix: {smaller_en}close other programs using the GPU, use a GPU with more memory, run on the CPU with"
        " --device cpu, or serve a pre-quantized (AWQ/GPTQ) checkpoint with --backend vllm (see docs/quantization.md)."
    )


def resident_bytes(model: Any) -> int:
    """Measured bytes of a loaded model's weights and buffers, as stored: bitsandbytes' scales and
    absmax included, a torchao tensor counted by the tensors it holds."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(part.numel() * part.element_size() for tensor in tensors for part in stored_tensors(tensor))


def stored_tensors(tensor: Any) -> list[Any]:
    """The plain tensors that hold ``tensor``'s data: itself, with bitsandbytes' quantization state,
    or the inner tensors of a wrapper subclass (torchao's quantized weights)."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None:
        return [part for name in flatten()[0] for part in stored_tensors(getattr(tensor, name))]
    parts = [tensor]
    scales = getattr(tensor, "SCB", None)  # LLM.int8: one float32 scale per row
    state = getattr(tensor, "quant_state", None)  # 4-bit: absmax (8-bit when nested) and its scales
    if scales is not None:
        parts.append(scales)
    if state is not None:
        parts += [state.absmax, state.code]
        nested = getattr(state, "state2", None)
        if nested is not None:
            parts += [nested.absmax, nested.code]
    return parts
