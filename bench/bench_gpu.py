"""The 7B on a GPU without a download: the exact Llama-2 7B configuration with random fp16 weights.

    python bench/bench_gpu.py [--bandwidth 4.8e12] [--compile] [--quantize none|int8|nf4|torchao-int4]
    python bench/bench_gpu.py --small --device cpu     # a tiny config: checks that the script runs

Prints one table: decoding tokens/s at batch 1 against the memory-bandwidth bound (the weights'
bytes read once per token / the GPU's bandwidth, given by ``--bandwidth``); time to first token at
512 / 2,048 / 3,500 prompt tokens through the app's in-process backend, with the cache of the
previous turn reused and without; and the app's overhead on top of a bare ``generate()`` (the
stop criterion, the streamer, the generation thread and its queue). ``--compile`` also measures
transformers' static cache with ``torch.compile`` on a bare ``generate()`` and through the app's
backend (its ``--compile``), and checks that a stop set from another thread still takes effect
within one step. ``--quantize int8|nf4`` loads the weights through bitsandbytes as the app's
``--quantize`` does (the random fp16 checkpoint is written to a scratch folder first) and prints
the weights' memory and, on a GPU, the peak memory of the run. ``--quantize torchao-int4`` is the
speed option to compare (not an app mode): torchao's int4 weight-only quantization (groups of 128,
tinygemm's packing, bfloat16 activations) of the decoder's linear layers, measured with
``--compile`` (implied); it needs torchao and a CUDA GPU of compute capability 8.0 or newer, and is
refused elsewhere.

The tokenizer is the demo model's (trained here in seconds; 3,000 pieces): the weights of the
token ids it cannot produce are zeroed in the output layer and decoding is greedy, so every
generated id decodes. Asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from bench_inprocess import (
    ANSWER,
    QUESTION,
    SYSTEM,
    backend_stream,
    bare_generate,
    decode_rates,
    finished,
    greedy,
    without_reuse,
)
from transformers import LlamaConfig, LlamaForCausalLM

from jslm_chat.backends.inprocess.backend import InProcessBackend, Placement
from jslm_chat.backends.inprocess.generation import _StopAndCount, generation_config
from jslm_chat.backends.inprocess.loading import bitsandbytes_config
from jslm_chat.backends.inprocess.memory import LLAMA2_7B
from jslm_chat.backends.inprocess.quantization import GIB, resident_bytes
from jslm_chat.backends.inprocess.static_cache import compile_config
from jslm_chat.backends.inprocess.streamer import JapaneseTextStreamer
from jslm_chat.demo_model.corpus import load_corpus
from jslm_chat.demo_model.tokenizer import train_tokenizer
from jslm_chat.model.backend import Backend, Conversation
from jslm_chat.model.presets import resolve_preset
from jslm_chat.model.prompt import Turn

SMALL = {**LLAMA2_7B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
SMALL["num_key_value_heads"] = 2
PROMPT_LENGTHS = (512, 2048, 3500)
H200_BANDWIDTH = 4.8e12
TORCHAO_INT4 = "torchao-int4"
BITSANDBYTES_MODES = ("int8", "nf4")
TORCHAO_GROUP_SIZE = 128


def build_backend(args: argparse.Namespace, tokenizer: Any) -> InProcessBackend:
    """The configuration with random weights on ``args.device``, behind the app's in-process backend."""
    bitsandbytes = args.quantize in BITSANDBYTES_MODES
    dtype = torch.float16 if args.device.startswith("cuda") or bitsandbytes else torch.float32
    dtype = torch.bfloat16 if args.quantize == TORCHAO_INT4 else dtype  # tinygemm's int4 kernels take bfloat16
    config = LlamaConfig(**(SMALL if args.small else LLAMA2_7B), bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device("cpu" if bitsandbytes else args.device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype).eval()
    with torch.no_grad():
        model.lm_head.weight[len(tokenizer) :] = 0  # ids the tokenizer lacks never win a greedy step
    if bitsandbytes:
        model = quantized_copy(model, args.quantize, args.device)
    elif args.quantize == TORCHAO_INT4:
        torchao_int4(model)
    preset = resolve_preset("demo").fitted_to_context(config.max_position_embeddings)
    placement = Placement(None, dtype, args.device, quantization=args.quantize)
    return InProcessBackend(model, tokenizer, preset, placement, cache_slots=2)


def quantized_copy(model: Any, mode: str, device: str) -> Any:
    """``model`` saved in float16 and loaded back in ``mode`` through bitsandbytes on ``device``."""
    with tempfile.TemporaryDirectory() as scratch:
        model.save_pretrained(scratch)
        del model
        return LlamaForCausalLM.from_pretrained(
            scratch,
            dtype=torch.float16,
            device_map={"": device},
            quantization_config=bitsandbytes_config(mode, torch.float16),
        ).eval()


def torchao_int4(model: Any) -> None:
    """Quantize the decoder's linear layers of ``model`` (on a CUDA GPU, in bfloat16) to torchao's int4
    weight-only in place; the embeddings and the output layer stay in bfloat16, as with bitsandbytes.
    Inductor keeps its defaults, as for the float16 ``--compile`` path (torchao's recommended
    settings add coordinate-descent tuning, which lengthens compilation)."""
    from torchao.quantization import Int4WeightOnlyConfig, quantize_

    config = Int4WeightOnlyConfig(
        group_size=TORCHAO_GROUP_SIZE, int4_packing_format="tile_packed_to_4d", set_inductor_config=False
    )
    quantize_(model.model, config)


def torchao_int4_refusal(device: str) -> str | None:
    """Why ``--quantize torchao-int4`` cannot run on ``device`` here, or None."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return (
            f"--quantize {TORCHAO_INT4} needs a CUDA GPU (torchao's int4 weight-only kernels, tinygemm, run on"
            f" CUDA only); {device!r} is not one here. Measure it on a GPU with --device cuda."
        )
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"--quantize {TORCHAO_INT4} needs compute capability 8.0 or newer (tinygemm); this GPU: {major}.{minor}."
    try:
        import torchao  # noqa: F401
    except ImportError as error:
        return f"--quantize {TORCHAO_INT4} needs torchao ({error}): pip install torchao==0.18.0, or carry its wheel."
    return None


def report_memory(backend: InProcessBackend, device: str) -> None:
    """The weights' bytes as loaded (bitsandbytes' scales included) and, on a GPU, the run's peak."""
    print(
        f"weights in memory ({backend.placement.quantization}): {resident_bytes(backend.model) / 2**20:.1f} MiB", end=""
    )
    if device.startswith("cuda"):
        print(f"; peak GPU memory allocated during the run: {torch.cuda.max_memory_allocated(device) / GIB:.2f} GiB")
    else:
        print()


def synchronized(run: Any, device: torch.device) -> Any:
    """``run`` followed by waiting for ``device``, so that timings include the device's work."""

    def wrapped(tokens: int) -> None:
        run(tokens)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return wrapped


def weight_bytes(model: Any) -> int:
    """Bytes of weights read for every decoded token: all of them but the embedding table, of
    which a step reads one row (an untied output layer is read whole, and counted)."""
    every = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    embeddings = model.get_input_embeddings().weight
    tied = embeddings is model.get_output_embeddings().weight
    return every - (0 if tied else embeddings.numel() * embeddings.element_size())


def two_turns(backend: Backend, prompt_tokens: int) -> tuple[Conversation, Conversation]:
    """A first turn with a long answer, given as a continuation (the app's state after it was written),
    and the next question, whose prompt holds about ``prompt_tokens``."""

    def turns(repeats: int) -> tuple[Conversation, Conversation]:
        answer = ANSWER * repeats
        question = "では、季節の行事について教えてください。"
        return Conversation(SYSTEM, [], QUESTION, continuation=answer), Conversation(
            SYSTEM, [Turn(QUESTION, answer)], question
        )

    def length(repeats: int) -> int:
        return backend.prepare(turns(repeats)[1], 2).num_tokens

    per_answer = length(2) - length(1)
    return turns(max(1, round((prompt_tokens - length(1)) / per_answer) + 1))


def first_token(backend: Backend, written: Conversation, asked: Conversation, runs: int) -> tuple[float, int, int]:
    """Median seconds to the first token of ``asked`` right after ``written``; prompt and reused tokens."""
    seconds = []
    for _ in range(runs):
        backend.close()
        finished(backend.stream(written, greedy(1)))
        reply = finished(backend.stream(asked, greedy(2)))
        seconds.append(reply.seconds_to_first_token or 0.0)
    return statistics.median(seconds), reply.prompt.num_tokens, reply.reused_tokens


def report_first_tokens(backend: InProcessBackend, runs: int) -> None:
    fresh = without_reuse(backend)
    print(f"time to first token (ms, median of {runs}): the next question after a long answer")
    print(f"  {'prompt':>8}{'reused':>8}{'reuse':>10}{'no reuse':>10}")
    for length in PROMPT_LENGTHS:
        written, asked = two_turns(backend, length)
        with_reuse, tokens, reused = first_token(backend, written, asked, runs)
        without, _, _ = first_token(fresh, written, asked, runs)
        print(f"  {tokens:>8}{reused:>8}{with_reuse * 1000:>10.1f}{without * 1000:>10.1f}")


def report_decoding(backend: InProcessBackend, args: argparse.Namespace) -> None:
    conversation = Conversation(SYSTEM, [], "日本の四季について教えてください。")
    prompt_ids = backend.prepare(conversation, args.tokens).token_ids
    runs = {
        "bare generate()": bare_generate(backend, prompt_ids, criteria=False, streamer=False),
        "+ stop criterion": bare_generate(backend, prompt_ids, criteria=True, streamer=False),
        "+ streamer": bare_generate(backend, prompt_ids, criteria=True, streamer=True),
        "backend.stream()": backend_stream(backend, conversation),
    }
    if args.compile:
        runs["static cache + compile"] = compiled_generate(backend, prompt_ids)
        compiled = InProcessBackend(backend.model, backend.tokenizer, backend.preset, backend.placement, compiled=True)
        runs["backend.stream(), compiled"] = backend_stream(compiled, conversation)
    runs = {name: synchronized(run, backend.model.device) for name, run in runs.items()}
    for run in runs.values():
        run(args.tokens)  # warm-up; the static cache then has its largest size: no recompilation later
    rates = decode_rates(runs, args.tokens, args.rounds)
    bound = args.bandwidth / weight_bytes(backend.model)
    print(f"decoding at batch 1, {args.tokens} tokens (tokens/s, median of {args.rounds} rounds):")
    read = weight_bytes(backend.model) / 1e9
    print(f"  {'memory-bandwidth bound':<28}{bound:>9.1f}  ({read:.2f} GB of weights read per token)")
    for name, rate in rates.items():
        print(f"  {name:<28}{rate:>9.1f}  {rate / rates['bare generate()']:>5.2f}× bare  {rate / bound:>5.2f}× bound")


def compiled_generate(backend: InProcessBackend, prompt_ids: list[int]) -> Any:
    """A bare ``generate()`` with transformers' static cache, which it compiles (``torch.compile``)."""
    model, tokenizer = backend.model, backend.tokenizer
    input_ids = torch.tensor([prompt_ids], device=model.device)

    def run(tokens: int, **extra: Any) -> None:
        config = generation_config(tokenizer, model, greedy(tokens))
        config.cache_implementation, config.compile_config = "static", compile_config()
        with torch.inference_mode():
            model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config, **extra
            )

    return run


def report_compiled_stop(backend: InProcessBackend, tokens: int) -> None:
    """Set the stop event from another thread once text arrives; count the steps decoded after it."""
    run = compiled_generate(
        backend, backend.prepare(Conversation(SYSTEM, [], "長い話をしてください。"), tokens).token_ids
    )
    stop = threading.Event()
    counter = _StopAndCount(stop)
    streamer = JapaneseTextStreamer(backend.tokenizer, skip_prompt=True)
    steps_at_stop: list[int] = []

    def stopper() -> None:
        next(iter(streamer))
        steps_at_stop.append(counter.steps)
        stop.set()
        for _ in streamer:
            pass

    thread = threading.Thread(target=stopper)
    thread.start()
    started = time.perf_counter()
    run(tokens, stopping_criteria=[counter], streamer=streamer)
    thread.join()
    extra = counter.steps - steps_at_stop[0]
    print(
        f"static cache + compile: a stop set from another thread ended generation after {extra} more step(s) "
        f"({counter.steps} of {tokens} decoded in {time.perf_counter() - started:.2f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument(
        "--small", action="store_true", help="a tiny config, 16 tokens, one run: a quick check that this runs"
    )
    parser.add_argument("--bandwidth", type=float, default=H200_BANDWIDTH, help="GPU memory bandwidth, bytes/s")
    parser.add_argument("--tokens", type=int, default=128, help="reply length for the decoding speed")
    parser.add_argument("--runs", type=int, default=3, help="repeats of each time-to-first-token figure")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of the decoding paths, taking turns")
    parser.add_argument("--compile", action="store_true", help="also measure static cache + torch.compile")
    parser.add_argument(
        "--quantize",
        choices=("none", *BITSANDBYTES_MODES, TORCHAO_INT4),
        default="none",
        help=f"int8, nf4: through bitsandbytes, as the app; {TORCHAO_INT4}: torchao int4 weight-only with --compile",
    )
    args = parser.parse_args()
    if args.compile and args.quantize in BITSANDBYTES_MODES:
        parser.error("--compile does not work with --quantize int8|nf4 (the app refuses the pair too)")
    if args.quantize == TORCHAO_INT4:
        if refusal := torchao_int4_refusal(args.device):
            parser.error(refusal)
        args.compile = True
    if args.small:
        args.tokens, args.runs, args.rounds = min(args.tokens, 16), 1, 3
    on_gpu = args.device.startswith("cuda")
    if not on_gpu:
        torch.set_num_threads(1)  # steady on a shared machine (see bench_inprocess.py)
    weights = f"random weights ({args.quantize})" if args.quantize != "none" else "random weights"
    print(f"{'tiny config' if args.small else 'Llama-2 7B config'}, {weights}, on {args.device}", end="")
    print(f" ({torch.cuda.get_device_name(args.device)})" if on_gpu else "")
    source = "the default: H200" if args.bandwidth == H200_BANDWIDTH else "from --bandwidth"
    print(f"memory bandwidth: {args.bandwidth:.3g} B/s ({source})")
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = train_tokenizer(load_corpus(), Path(scratch))
    tokenizer.model_max_length = LLAMA2_7B["max_position_embeddings"]
    backend = build_backend(args, tokenizer)
    report_decoding(backend, args)
    report_first_tokens(backend, args.runs)
    report_memory(backend, args.device)
    if args.compile:
        report_compiled_stop(backend, args.tokens)


if __name__ == "__main__":
    main()
