"""The demo model's build recipe: corpus, special token ids, tokenizer, model and training settings.

Everything that decides the built bytes is named here, so a hash of it (and of the corpus text)
names the cache folder: any edit gives a new one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

CORPUS_PATH = Path(__file__).resolve().parents[2] / "assets" / "demo_corpus_ja.txt"
DEFAULT_TRAIN_STEPS = 400
# Bump when the build changes in a way the recipe below does not capture: it renames the cache.
FORMAT_VERSION = 1

BOS_ID, EOS_ID, PAD_ID, UNK_ID = 1, 2, 0, 0

TOKENIZER_RECIPE: dict[str, Any] = {
    "model_type": "bpe",
    "vocab_size": 3000,  # an upper bound: a smaller corpus gets a smaller vocabulary
    "hard_vocab_limit": False,
    "character_coverage": 1.0,
    "byte_fallback": True,
    "unk_id": UNK_ID,
    "bos_id": BOS_ID,
    "eos_id": EOS_ID,
    "pad_id": -1,
    "normalization_rule_name": "identity",
    "add_dummy_prefix": True,
    "remove_extra_whitespaces": False,
    "split_digits": True,
    "allow_whitespace_only_pieces": True,
    # A space is always a token of its own (Llama-2 has "▁" as id 29871 and mostly splits it from
    # Japanese too). Without this, "[/INST] " ends the prompt with a lone "▁" that training only
    # ever saw before EOS (the answer's space merges into pieces like "▁こん"), so the model would
    # answer with EOS at once. See tokenizer.train_tokenizer for how it becomes a normal piece.
    "user_defined_symbols": ["▁"],
    "num_threads": 1,
}
MODEL_RECIPE: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}
TRAIN_RECIPE: dict[str, Any] = {
    "batch_size": 16,
    "lr": 3e-3,
    "betas": (0.9, 0.95),
    "weight_decay": 0.0,
    "warmup_steps": 20,
    "min_lr_ratio": 0.1,
    "grad_clip": 1.0,
    "second_turn_every": 3,  # see corpus.training_samples
    # One intra-op thread: as fast per core, the same bytes whatever the machine's thread count,
    # and no OpenMP stalls (10-20x slower) when other processes share the CPUs.
    "torch_threads": 1,
}


def build_key(train_steps: int = DEFAULT_TRAIN_STEPS, seed: int = 0, corpus_path: Path = CORPUS_PATH) -> str:
    """Short hash of the corpus and the whole build recipe: any edit gives a new cache folder."""
    recipe = {
        "format_version": FORMAT_VERSION,
        "tokenizer": TOKENIZER_RECIPE,
        "model": MODEL_RECIPE,
        "train": {**TRAIN_RECIPE, "train_steps": train_steps, "seed": seed},
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    digest.update(corpus_path.read_bytes())
    return digest.hexdigest()[:12]
