"""Build the demo model into a folder: tokenizer, weights, generation config and a README."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from jslm_chat.demo_model.corpus import load_corpus, training_samples
from jslm_chat.demo_model.recipe import BOS_ID, DEFAULT_TRAIN_STEPS, EOS_ID, PAD_ID, TRAIN_RECIPE, build_key
from jslm_chat.demo_model.tokenizer import train_tokenizer
from jslm_chat.demo_model.training import train_model
from jslm_chat.model.presets import DEFAULT_SYSTEM_PROMPT

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

_README = """\
# jslm-chat offline demo model

A tiny Llama-2-style chat model (LlamaForCausalLM, {params:,} parameters, float32) with a
sentencepiece BPE tokenizer ({vocab} pieces, byte fallback), built by `jslm_chat.demo_model` from
the bundled Japanese text `assets/demo_corpus_ja.txt` ({pairs} question/answer pairs) in
{steps} training steps (seed {seed}). It uses the Llama-2 `[INST]` prompt format and the default
system prompt `{system}`; it answers in memorised, often garbled Japanese and then emits `</s>`.

It exists so that the app, its tests and benchmarks run offline. It knows nothing.

Build key: `{key}`
"""


def _train(
    pairs: list[tuple[str, str]], work_dir: Path, train_steps: int, seed: int
) -> tuple[PreTrainedTokenizerBase, LlamaForCausalLM]:
    """The trained tokenizer (its ``tokenizer.model`` left in ``work_dir``) and model."""
    from transformers import GenerationConfig

    tokenizer = train_tokenizer(pairs, work_dir)
    model = train_model(training_samples(pairs, tokenizer), len(tokenizer), train_steps, seed)
    model.generation_config = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    return tokenizer, model


def build_demo_model(out_dir: Path, *, train_steps: int = DEFAULT_TRAIN_STEPS, seed: int = 0) -> None:
    """Train the tokenizer and the tiny model and save both (plus a README) into ``out_dir``.

    Deterministic for a given corpus, ``train_steps``, ``seed`` and CPU; needs no network.
    The caller's torch RNG state and thread count are left as they were.
    """
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    logger.info("Building the offline demo model (%d steps) in %s", train_steps, out_dir)
    started = time.perf_counter()
    pairs = load_corpus()
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_RECIPE["torch_threads"])
    try:
        with tempfile.TemporaryDirectory(prefix="jslm-demo-tok-") as work, torch.random.fork_rng(devices=[]):
            tokenizer, model = _train(pairs, Path(work), train_steps, seed)
            model.save_pretrained(out_dir)  # model.safetensors, float32
            tokenizer.save_pretrained(out_dir)
            # The real model repos ship tokenizer.model too; tokenizer.json is what gets loaded.
            shutil.copyfile(Path(work) / "tokenizer.model", out_dir / "tokenizer.model")
    finally:
        torch.set_num_threads(threads)
    readme = _README.format(
        params=sum(p.numel() for p in model.parameters()),
        vocab=len(tokenizer),
        pairs=len(pairs),
        steps=train_steps,
        seed=seed,
        system=DEFAULT_SYSTEM_PROMPT,
        key=build_key(train_steps, seed),
    )
    (out_dir / "README.md").write_text(readme, encoding="utf-8")
    logger.info("Built the demo model in %.1f s: %s", time.perf_counter() - started, out_dir)
