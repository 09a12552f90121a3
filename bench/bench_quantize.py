"""What --quantize costs: quality on the demo model, the 7B's weights per mode, and the cards' budget.

    python bench/bench_quantize.py [--questions 40] [--layers 2]

1. Quality, on the trained demo model (CPU, real bitsandbytes): perplexity of the replies of its
   corpus (teacher-forced, the conversations as trained; the recipe holds no text out, so this is
   text it has seen) and of ``assets/examples_ja.txt`` (text it never saw), and the greedy
   agreement with the unquantized float32 replies to the corpus' first questions (identical
   replies, and the share of reply tokens before the first difference), for none (float32 and
   float16), int8 and nf4.
2. The 7B's weights per mode: the exact Llama-2 7B configuration with random weights and 1 and 2 of
   its 32 layers, quantized by bitsandbytes and measured (parameters, buffers, scales, absmax); the
   32-layer figure is the 1-layer one plus 31 times the difference (the layers are identical),
   beside ``quantization.weight_bytes``' prediction.
3. The budget: what ``--quantize auto`` picks for common cards, and the context and cache room left.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from jslm_chat.backends.inprocess.loading import bitsandbytes_config, load_inprocess_backend
from jslm_chat.backends.inprocess.memory import LLAMA2_7B, WORKING_MARGIN_BYTES, cache_bytes_per_token
from jslm_chat.backends.inprocess.quantization import (
    GIB,
    MemoryTooSmallError,
    choose_quantization,
    resident_bytes,
    weight_bytes,
)
from jslm_chat.demo_model import demo_model_dir, load_corpus, training_samples
from jslm_chat.model.backend import Conversation
from jslm_chat.model.params import GenerationParams

ROOT = Path(__file__).resolve().parent.parent
# Card, free GiB as torch.cuda.mem_get_info reports it with the CUDA context up (about 0.4 GiB under the card).
CARDS = [
    ("A10G 24 GB", 21.9),
    ("T4 16 GB", 14.5),
    ("RTX 3060 / 4070 12 GB", 11.2),
    ("RTX 4060 / 3070 8 GB", 7.2),
    ("6 GB laptop GPU", 5.4),
    ("4 GB GPU", 3.6),
]
VARIANTS = [("none", "float32"), ("none", "float16"), ("int8", "float16"), ("nf4", "float16")]
REPLY_TOKENS = 32


def perplexity(model: Any, samples: list[tuple[list[int], list[bool]]]) -> float:
    """exp of the mean negative log-likelihood of the tokens marked True, each given what precedes it."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for ids, scored in samples:
            logits = model(torch.tensor([ids])).logits[0, :-1].float()
            losses = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
            mask = torch.tensor(scored[1:])
            total += float(losses[mask].sum())
            count += int(mask.sum())
    return math.exp(total / count)


def greedy_replies(backend: Any, questions: list[str]) -> list[list[int]]:
    params = GenerationParams(REPLY_TOKENS, 0.0, 1.0, 0, 1.0, 0)
    replies = []
    for question in questions:
        reply = backend.stream(Conversation(backend.preset.system_prompt, [], question), params)
        for _ in reply:
            pass
        replies.append(backend.tokenizer.encode(reply.text, add_special_tokens=False))
    return replies


def agreement(reference: list[list[int]], replies: list[list[int]]) -> tuple[float, float]:
    """Share of identical replies, and share of reference tokens before the first difference."""
    same = sum(ours == theirs for ours, theirs in zip(reference, replies, strict=True))
    prefix = 0
    for ours, theirs in zip(reference, replies, strict=True):
        differ = [index for index, pair in enumerate(zip(ours, theirs, strict=False)) if pair[0] != pair[1]]
        prefix += differ[0] if differ else min(len(ours), len(theirs))
    return same / len(reference), prefix / sum(len(ours) for ours in reference)


def report_quality(questions: int) -> None:
    directory = str(demo_model_dir())
    corpus = load_corpus()
    held_out = [line.strip() for line in (ROOT / "assets" / "examples_ja.txt").read_text().splitlines() if line.strip()]
    asked = [question for question, _ in corpus[:questions]]
    print(f"quality on the demo model: {len(corpus)} corpus conversations, {len(held_out)} unseen example lines,")
    print(f"greedy replies (at most {REPLY_TOKENS} tokens) to the first {len(asked)} corpus questions, compared with")
    print("none / float32 and none / float16: identical replies, and reply tokens before the first difference")
    print(f"  {'mode':<16}{'ppl seen':>10}{'ppl unseen':>12}{'same as fp32':>20}{'same as fp16':>20}{'weights':>10}")
    references: list[list[list[int]]] = []
    for mode, dtype in VARIANTS:
        backend = load_inprocess_backend(directory, device="cpu", dtype=dtype, quantize=mode)
        seen = training_samples(corpus, backend.tokenizer)
        unseen = [
            ([1, *ids], [True] * (len(ids) + 1))
            for ids in (backend.tokenizer.encode(text, add_special_tokens=False) for text in held_out)
        ]
        replies = greedy_replies(backend, asked)
        if len(references) < 2:
            references.append(replies)
        scores = f"{perplexity(backend.model, seen):>10.3f}{perplexity(backend.model, unseen):>12.1f}"
        for reference in references:
            same, tokens = agreement(reference, replies)
            scores += f"{same:>10.0%} /{tokens:>5.0%} tok".rjust(20)
        print(f"  {mode + ' / ' + dtype:<16}{scores}{resident_bytes(backend.model) / 1e6:>8.2f}MB")
        backend.close()


def measured_bytes(layers: int, mode: str, scratch: Path) -> int:
    """Bytes of the 7B configuration cut to ``layers`` layers, saved in float16 and loaded in ``mode``."""
    directory = scratch / f"layers{layers}"
    if not directory.exists():
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(**{**LLAMA2_7B, "num_hidden_layers": layers})).to(torch.float16).save_pretrained(
            directory
        )
    model = AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float16, device_map="cpu", quantization_config=bitsandbytes_config(mode, torch.float16)
    )
    return resident_bytes(model)


def report_seven_b(layers: int) -> None:
    config = LlamaConfig(**LLAMA2_7B)
    print(f"the 7B's weights (Llama-2 7B configuration, random weights, measured at 1 and {layers} layers on the CPU):")
    print(f"  {'mode':<6}{'measured':>12}{'predicted':>12}{'per layer':>12}")
    with tempfile.TemporaryDirectory() as scratch:
        for mode in ("none", "int8", "nf4"):
            one, more = measured_bytes(1, mode, Path(scratch)), measured_bytes(layers, mode, Path(scratch))
            per_layer = (more - one) / (layers - 1)
            total = one + per_layer * 31
            predicted = weight_bytes(config, mode) / GIB
            print(f"  {mode:<6}{total / GIB:>8.2f} GiB{predicted:>8.2f} GiB{per_layer / 2**20:>8.1f} MiB")


def report_cards() -> None:
    config = LlamaConfig(**LLAMA2_7B)
    per_token = cache_bytes_per_token(config, 2)
    print(
        "--quantize auto for the 7B (needs: weights + one 4,096-token cache (2 GiB)"
        f" + {WORKING_MARGIN_BYTES / GIB:.0f} GiB):"
    )
    print(f"  {'card':<24}{'free':>9}{'auto':>6}{'context':>9}{'4,096-token caches that fit':>30}")
    for card, free_gib in [*CARDS, ("CPU RAM", None)]:
        if free_gib is None:
            print(f"  {card:<24}{'—':>9}{'none':>6}{4096:>9,}{'bounded by RAM':>30}")
            continue
        free = int(free_gib * GIB)
        try:
            plan = choose_quantization("auto", {0: free}, config, 4096)
        except MemoryTooSmallError:
            print(f"  {card:<24}{free_gib:>5.1f} GiB{'—':>6}{'—':>9}{'too small: refused':>30}")
            continue
        room = (free - weight_bytes(config, plan.mode) - WORKING_MARGIN_BYTES) / (per_token * 4096)
        print(f"  {card:<24}{free_gib:>5.1f} GiB{plan.mode:>6}{plan.context:>9,}{room:>30.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=40, help="corpus questions answered greedily per mode")
    parser.add_argument("--layers", type=int, default=2, help="layers of the 7B configuration measured (≥ 2)")
    parser.add_argument("--skip-7b", action="store_true", help="leave out the 7B measurement (it needs ~4 GB RAM)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    report_quality(args.questions)
    if not args.skip_7b:
        report_seven_b(max(2, args.layers))
    report_cards()


if __name__ == "__main__":
    main()
