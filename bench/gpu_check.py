"""The prepared GPU check: one command on a lent GPU, under 8 minutes, one JSON and one Markdown table.

    scripts/gpu-check OUT_DIR                       # Llama-2 7B configuration, random fp16 weights, cuda
    scripts/gpu-check OUT_DIR --tiny --skip-compile # a tiny configuration on the CPU: that it runs

Needs torch and transformers only (bitsandbytes and torchao where present: their rows are skipped,
with the reason, where not); no network, no Gradio, no sentencepiece (the tokenizer is a byte-level BPE trained
here in seconds on the demo corpus). Measures, through the app's in-process backend: decoding
tokens/s at batch 1, eager and ``--compile``, against the memory-bandwidth bound (weights read per
token, the embedding table excepted / the copy bandwidth measured here and the card's nominal one);
the first token at 512 / 2,048 / 3,500 prompt tokens with the previous turn's cache reused and
without; the app's overhead (``backend.stream()`` against a bare ``generate()``); whether greedy
replies are the same eager and compiled; recovery from out-of-memory (the pool filled until the
card is full, then a long reply); 4-bit and 8-bit loading (bitsandbytes, as the app), and torchao's
int4 weight-only with ``--compile`` (a speed option to compare; CUDA compute capability 8.0 or newer).
A section that fails records its error and the rest go on. Writes ``gpu-check.json`` and ``gpu-check.md`` to OUT_DIR.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_gpu, also when not run as a script

import torch
import transformers
from bench_gpu import (
    PROMPT_LENGTHS,
    SMALL,
    first_token,
    synchronized,
    torchao_int4,
    torchao_int4_refusal,
    two_turns,
    weight_bytes,
)
from bench_inprocess import SYSTEM, backend_stream, bare_generate, decode_rates, finished, greedy, without_reuse
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from jslm_chat.backends.inprocess.backend import InProcessBackend, Placement
from jslm_chat.backends.inprocess.generation import free_accelerator_memory, loaded_model
from jslm_chat.backends.inprocess.growing_cache import new_cache
from jslm_chat.backends.inprocess.loading import bitsandbytes_config
from jslm_chat.backends.inprocess.memory import LLAMA2_7B, cache_bytes_per_token
from jslm_chat.backends.inprocess.quantization import resident_bytes
from jslm_chat.backends.inprocess.static_cache import static_sizes
from jslm_chat.demo_model.corpus import load_corpus, tokenizer_texts
from jslm_chat.model.backend import Conversation
from jslm_chat.model.presets import resolve_preset

NOMINAL_BANDWIDTH = {"H200": 4.8e12, "H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12, "H100 NVL": 3.9e12}
DECODE_TOKENS = 128
EQUALITY_TOKENS = 64


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A 3,000-piece byte-level BPE trained on the demo corpus (``tokenizers``, which transformers needs)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=3000, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(tokenizer_texts(load_corpus()), trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    wrapped.model_max_length = LLAMA2_7B["max_position_embeddings"]
    return wrapped


def random_model(tiny: bool, device: str, tokenizer: Any) -> Any:
    """The configuration with random weights; ids the tokenizer lacks never win a greedy step."""
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    config = LlamaConfig(**(SMALL if tiny else LLAMA2_7B), bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype).eval()
    with torch.no_grad():
        model.lm_head.weight[len(tokenizer) :] = 0
    return model


def backend_for(model: Any, tokenizer: Any, *, compiled: bool = False) -> InProcessBackend:
    preset = resolve_preset("demo").fitted_to_context(model.config.max_position_embeddings)
    placement = Placement(None, model.dtype, str(model.device))
    return InProcessBackend(model, tokenizer, preset, placement, cache_slots=2, compiled=compiled)


def copy_bandwidth(device: torch.device) -> float | None:
    """Bytes/s of a 1 GiB device-to-device copy (read + write), the best of five."""
    if device.type != "cuda":
        return None
    source = torch.empty(2**29, dtype=torch.float16, device=device)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize(device)
        started = time.perf_counter()
        target.copy_(source)
        torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * source.nbytes / best


def decoding(backend: InProcessBackend, compiled: InProcessBackend | None, tokens: int, rounds: int) -> dict:
    """Tokens/s at batch 1 per path, and the share of the memory-bandwidth bound they reach."""
    conversation = Conversation(SYSTEM, [], "日本の四季について教えてください。")
    prompt_ids = backend.prepare(conversation, tokens).token_ids
    runs = {"bare generate()": bare_generate(backend, prompt_ids, criteria=False, streamer=False)}
    runs["backend.stream()"] = backend_stream(backend, conversation)
    if compiled is not None:
        runs["backend.stream(), --compile"] = backend_stream(compiled, conversation)
    device = backend.model.device
    runs = {name: synchronized(run, device) for name, run in runs.items()}
    for run in runs.values():
        run(tokens)  # warm-up
    rates = decode_rates(runs, tokens, rounds)
    read = weight_bytes(backend.model)
    measured = copy_bandwidth(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    nominal = next((value for key, value in NOMINAL_BANDWIDTH.items() if key in name), None)
    result: dict[str, Any] = {
        "weights_read_per_token_gb": read / 1e9,
        "copy_bandwidth_gbs": measured and measured / 1e9,
    }
    result["nominal_bandwidth_gbs"] = nominal and nominal / 1e9
    result["app_overhead"] = 1 - rates["backend.stream()"] / rates["bare generate()"]
    result["paths"] = {
        path: {
            "tokens_per_s": rate,
            "of_copy_bound": measured and rate * read / measured,
            "of_nominal_bound": nominal and rate * read / nominal,
        }
        for path, rate in rates.items()
    }
    return result


def first_tokens(backend: InProcessBackend, runs: int) -> list[dict]:
    """Seconds to the first token of the next question after a long answer, with reuse and without."""
    fresh = without_reuse(backend)
    rows = []
    for length in PROMPT_LENGTHS:
        written, asked = two_turns(backend, length)
        with_reuse, tokens, reused = first_token(backend, written, asked, runs)
        without, _, _ = first_token(fresh, written, asked, runs)
        rows.append({"prompt_tokens": tokens, "reused": reused, "reuse_s": with_reuse, "no_reuse_s": without})
    return rows


def greedy_equality(eager: InProcessBackend, compiled: InProcessBackend) -> dict:
    """Whether the compiled backend's greedy reply is the eager one, and where they first differ."""
    conversation = Conversation(SYSTEM, [], "東京について詳しく教えてください。")
    first = finished(eager.stream(conversation, greedy(EQUALITY_TOKENS))).text
    second = finished(compiled.stream(conversation, greedy(EQUALITY_TOKENS))).text
    differs = next((index for index, pair in enumerate(zip(first, second, strict=False)) if len(set(pair)) > 1), None)
    return {"same": first == second, "first_difference_at_char": differs, "chars": len(first)}


class GraphRecordings:
    """CUDA graphs recorded by torch.compile's graph trees (its recording callback) and skipped
    (inductor's counter) since this object was made."""

    def __init__(self) -> None:
        from torch._dynamo.callback import CallbackTrigger, on_compile_start

        self.recorded = 0
        self._skipped_before = torch._dynamo.utils.counters["inductor"]["cudagraph_skips"]

        def started(event: Any) -> None:
            self.recorded += event.callback_trigger == CallbackTrigger.CUDAGRAPH_RECORDING

        on_compile_start(started)

    def figures(self) -> dict[str, int]:
        skipped = torch._dynamo.utils.counters["inductor"]["cudagraph_skips"] - self._skipped_before
        return {"recorded": self.recorded, "skipped": skipped}


def compile_warm_up(model: Any, tokenizer: Any, made: list[InProcessBackend], graphs: GraphRecordings) -> dict:
    """The compiled backend made (into ``made``) and warmed up: whether it compiled, and the CUDA graphs
    recorded at start-up against their bound (one per cache size and serving thread)."""
    made.append(backend_for(model, tokenizer, compiled=True))
    bound = len(static_sizes(made[0].context_length)) * len(loaded_model(made[0].model_key).static_caches)
    return {"compiled": made[0].compiled, "cuda_graphs_bound": bound, **graphs.figures()}


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def fill_pool(backend: InProcessBackend, entry_tokens: int) -> int:
    """Kept caches of ``entry_tokens`` each, added until the device is full; how many."""
    model, pool = backend.model, loaded_model(backend.model_key).caches
    pool.budget_bytes, pool.slots = None, 10_000
    shape = (
        1,
        model.config.num_key_value_heads,
        entry_tokens,
        model.config.hidden_size // model.config.num_attention_heads,
    )
    entries = 0
    try:
        while True:
            cache = new_cache(model.config)
            for layer in cache.layers:
                layer.update(
                    torch.empty(shape, dtype=model.dtype, device=model.device),
                    torch.empty(shape, dtype=model.dtype, device=model.device),
                )
            pool.put(cache, [entries + 10] * entry_tokens)
            entries += 1
    except torch.OutOfMemoryError:
        return entries


def out_of_memory_recovery(backend: InProcessBackend) -> dict:
    """The pool filled until the card is out of memory, then a long reply: it must still answer.
    On the CPU the failure is raised once in the model's forward pass instead (simulated)."""
    recorder = _Recorder()
    logging.getLogger("jslm_chat.backends.inprocess.generation").addHandler(recorder)
    simulated = backend.model.device.type != "cuda"
    if simulated:
        failures = [torch.OutOfMemoryError("simulated out of memory")]

        def fail_once(*args: Any) -> None:
            if failures:
                raise failures.pop()

        hook = backend.model.model.layers[0].register_forward_hook(fail_once)
    filled = 0 if simulated else fill_pool(backend, 2048)
    try:
        _, asked = two_turns(backend, PROMPT_LENGTHS[-1])
        reply = finished(backend.stream(asked, greedy(16)))
        outcome = {"finish_reason": reply.finish_reason, "new_tokens": reply.new_tokens}
    except Exception as error:
        outcome = {"error": f"{type(error).__name__}: {error}"}
    finally:
        logging.getLogger("jslm_chat.backends.inprocess.generation").removeHandler(recorder)
        if simulated:
            hook.remove()
        pool = loaded_model(backend.model_key).caches
        kept = len(pool)
        pool.clear()
    retried = any("retrying once" in message for message in recorder.messages)
    return {
        "simulated": simulated,
        "pool_entries_filled": filled,
        "out_of_memory_then_retried": retried,
        "pool_entries_after": kept,
        **outcome,
    }


def load_bitsandbytes(mode: str) -> Callable[[str, torch.device], Any]:
    """A loader of a saved float16 checkpoint in ``mode`` (int8 or nf4) as the app loads it, or why it cannot."""

    def load(folder: str, device: torch.device) -> Any:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            return "bitsandbytes is not installed"
        config = bitsandbytes_config(mode, torch.float16)
        return LlamaForCausalLM.from_pretrained(folder, quantization_config=config, device_map={"": device})

    return load


def load_torchao_int4(folder: str, device: torch.device) -> Any:
    """The saved checkpoint in bfloat16 with its decoder's linear layers in torchao's int4, or why it cannot."""
    if refusal := torchao_int4_refusal(str(device)):
        return refusal
    loaded = LlamaForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map={"": device})
    torchao_int4(loaded)
    return loaded


QUANTIZED = {
    "4-bit nf4": (load_bitsandbytes("nf4"), False),
    "8-bit": (load_bitsandbytes("int8"), False),
    "torchao int4 + compile": (load_torchao_int4, True),  # the speed option to compare (not an app mode)
}


def quantized(model: Any, tokenizer: Any, deadline: float) -> dict:
    """Decoding tokens/s and weight memory of the same weights in each quantized mode, while time is
    left; a mode that cannot run here is skipped, with the reason."""
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        for name, (load, compiled) in QUANTIZED.items():
            if time.monotonic() > deadline:
                results[name] = {"skipped": "out of time"}
                continue
            loaded = load(folder, model.device)
            if isinstance(loaded, str):
                results[name] = {"skipped": loaded}
                continue
            results[name] = quantized_decoding(loaded, tokenizer, compiled)
            del loaded
            free_accelerator_memory()
    return results


def quantized_decoding(loaded: Any, tokenizer: Any, compiled: bool) -> dict:
    """Tokens/s of ``loaded`` through the app's backend (compiled, with its warm-up time, if asked)."""
    started = time.monotonic()
    backend = backend_for(loaded, tokenizer, compiled=compiled)
    warm_up = time.monotonic() - started
    run = synchronized(
        backend_stream(backend, Conversation(SYSTEM, [], "日本の四季について教えてください。")), loaded.device
    )
    run(16)
    result = {
        "tokens_per_s": decode_rates({"run": run}, DECODE_TOKENS, 3)["run"],
        "memory_gb": resident_bytes(loaded) / 1e9,
    }
    if compiled:
        result.update(compiled=backend.compiled, warm_up_s=warm_up)
    backend.close()
    return result


def section(results: dict, name: str, measure: Callable[[], Any]) -> None:
    """Run one measure into ``results[name]``; a failure is recorded, not raised."""
    started = time.monotonic()
    print(f"-- {name} ...", flush=True)
    try:
        results[name] = measure()
    except Exception as error:
        logging.exception("%s failed", name)
        results[name] = {"error": f"{type(error).__name__}: {error}"}
    print(f"   {name}: {time.monotonic() - started:.1f} s", flush=True)


def markdown(results: dict) -> str:
    """The results as one Markdown table (figures rounded; the JSON has them all)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}"
        return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)

    rows = ["| measure | value |", "|---|---|"]
    for name, value in results.items():
        if isinstance(value, dict) and "paths" in value:
            for path, figures in value["paths"].items():
                rows.append(f"| decoding: {path} | {', '.join(f'{key} {cell(v)}' for key, v in figures.items())} |")
            value = {key: figure for key, figure in value.items() if key != "paths"}
        if isinstance(value, list):
            for row in value:
                rows.append(f"| {name} | {', '.join(f'{key} {cell(v)}' for key, v in row.items())} |")
            continue
        if isinstance(value, dict):
            rows.append(f"| {name} | {', '.join(f'{key} {cell(v)}' for key, v in value.items())} |")
        else:
            rows.append(f"| {name} | {cell(value)} |")
    return "\n".join(rows) + "\n"


def environment(device: str, tiny: bool) -> dict:
    on_gpu = device.startswith("cuda")
    return {
        "configuration": "tiny" if tiny else "Llama-2 7B, random fp16 weights",
        "device": torch.cuda.get_device_name(device) if on_gpu else platform.processor() or "cpu",
        "memory_gb": torch.cuda.get_device_properties(device).total_memory / 1e9 if on_gpu else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for gpu-check.json and gpu-check.md")
    parser.add_argument("--tiny", action="store_true", help="a tiny configuration on the CPU, one quick round")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda, or cpu with --tiny)")
    parser.add_argument("--skip-compile", action="store_true", help="leave out --compile (slow to compile on a CPU)")
    parser.add_argument("--minutes", type=float, default=5.5, help="quantized modes start only before this")
    args = parser.parse_args(argv)
    started = time.monotonic()
    device = args.device or ("cpu" if args.tiny else "cuda")
    tokens, rounds, runs = (8, 1, 1) if args.tiny else (DECODE_TOKENS, 3, 3)
    results: dict[str, Any] = {"environment": environment(device, args.tiny)}
    tokenizer = byte_level_tokenizer()
    model = random_model(args.tiny, device, tokenizer)
    backend = backend_for(model, tokenizer)
    budget = loaded_model(backend.model_key).caches.budget_bytes
    per_token = cache_bytes_per_token(model.config, model.dtype.itemsize)
    results["cache pool"] = {"budget_gb": budget and budget / 1e9, "bytes_per_token": per_token}
    compiled: InProcessBackend | None = None
    if not args.skip_compile:
        made: list[InProcessBackend] = []
        graphs = GraphRecordings()
        section(results, "compile warm-up", lambda: compile_warm_up(model, tokenizer, made, graphs))
        compiled = made[0] if made and made[0].compiled else None
    section(results, "decoding", lambda: decoding(backend, compiled, tokens, rounds))
    section(results, "first token", lambda: first_tokens(backend, runs))
    if compiled is not None:
        section(results, "greedy eager = compiled", lambda: greedy_equality(backend, compiled))
        results["cuda graphs after the replies"] = graphs.figures()  # the same as after warm-up if none was re-recorded
    section(results, "out-of-memory recovery", lambda: out_of_memory_recovery(backend))
    section(results, "quantized", lambda: quantized(model, tokenizer, started + args.minutes * 60))
    results["total_s"] = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-check.json").write_text(json.dumps(results, ensure_ascii=False, indent=2), encoding="utf-8")
    (args.out / "gpu-check.md").write_text(markdown(results), encoding="utf-8")
    print(markdown(results))
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
