"""The offline demo model: a tiny Llama-2-style Japanese chat model built from bundled text.

It lets the app, the tests and the benchmarks run with no network and no 13 GB download. A
sentencepiece BPE tokenizer (byte fallback, like Llama-2's) and a ~0.8M-parameter
``LlamaForCausalLM`` are trained on ``assets/demo_corpus_ja.txt`` in 20-25 s on two CPU cores.
The training text uses the Llama-2 ``[INST]`` prompt format and token ids of DESIGN.md §3, so the
model answers in (memorised, often garbled) Japanese, in later turns too, and ends its reply with
EOS. It knows nothing: it is for checking the plumbing, never the answers.

``demo_model_dir()`` builds it once into a cache folder and reuses it. Run
``python -m jslm_chat.demo_model --out DIR`` to write one somewhere else.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

try:
    import fcntl
except ImportError:  # Windows: no lock, the atomic rename still keeps the cache consistent.
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CORPUS_PATH",
    "DEFAULT_TRAIN_STEPS",
    "SYSTEM_PROMPT",
    "build_demo_model",
    "demo_model_dir",
    "load_corpus",
    "main",
    "training_samples",
]

logger = logging.getLogger(__name__)

CORPUS_PATH = Path(__file__).resolve().parent.parent / "assets" / "demo_corpus_ja.txt"
# The app's default system prompt (DESIGN.md §3), used in every first turn of the training text.
SYSTEM_PROMPT = "あなたは役立つアシスタントです。"
DEFAULT_TRAIN_STEPS = 400
# Bump when the build changes in a way the recipe below does not capture: it renames the cache.
FORMAT_VERSION = 1

BOS_ID, EOS_ID, PAD_ID, UNK_ID = 1, 2, 0, 0

_TOKENIZER_RECIPE: dict[str, Any] = {
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
    # answer with EOS at once. See _train_tokenizer for how it is turned into a normal piece.
    "user_defined_symbols": ["▁"],
    "num_threads": 1,
}
_MODEL_RECIPE: dict[str, Any] = {
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
_TRAIN_RECIPE: dict[str, Any] = {
    "batch_size": 16,
    "lr": 3e-3,
    "betas": (0.9, 0.95),
    "weight_decay": 0.0,
    "warmup_steps": 20,
    "min_lr_ratio": 0.1,
    "grad_clip": 1.0,
    "second_turn_every": 3,  # see training_samples
    # One intra-op thread: as fast per core, the same bytes whatever the machine's thread count,
    # and no OpenMP stalls (10-20x slower) when other processes share the CPUs.
    "torch_threads": 1,
}
_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def load_corpus(path: Path = CORPUS_PATH) -> list[tuple[str, str]]:
    """Parse the corpus into (question, answer) pairs.

    Format: blocks separated by blank lines, each one ``Q: ...`` line then one ``A: ...`` line;
    lines starting with ``#`` are comments.
    """
    pairs: list[tuple[str, str]] = []
    block: list[tuple[int, str]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate([*lines, ""], start=1):
        if line.startswith("#"):
            continue
        if line.strip():
            block.append((number, line))
            continue
        if not block:
            continue
        if len(block) != 2 or not block[0][1].startswith("Q: ") or not block[1][1].startswith("A: "):
            raise ValueError(f"{path}:{block[0][0]}: expected a 'Q: ' line then an 'A: ' line")
        question, answer = block[0][1][3:].strip(), block[1][1][3:].strip()
        if not question or not answer:
            raise ValueError(f"{path}:{block[0][0]}: empty question or answer")
        pairs.append((question, answer))
        block = []
    if not pairs:
        raise ValueError(f"{path}: no Q/A pairs")
    return pairs


def _render(question: str, answer: str | None, system: str | None) -> str:
    """The text of one Llama-2 turn (DESIGN.md §3), without BOS/EOS; ``answer=None`` leaves it open."""
    user = f"<<SYS>>\n{system}\n<</SYS>>\n\n{question}" if system else question
    text = f"[INST] {user} [/INST] "
    return text if answer is None else f"{text}{answer} "


def _turn(tokenizer: PreTrainedTokenizerBase, question: str, answer: str, system: str | None) -> tuple[list[int], int]:
    """``[BOS] + enc("[INST] ... [/INST] {answer} ") + [EOS]`` and the length of its open prompt."""

    def enc(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    prompt = [BOS_ID, *enc(_render(question, None, system))]
    ids = [BOS_ID, *enc(_render(question, answer, system)), EOS_ID]
    if ids[: len(prompt)] != prompt:
        raise RuntimeError(f"prompt tokens are not a prefix of the finished turn: {question!r}")
    return ids, len(prompt)


def training_samples(
    pairs: list[tuple[str, str]], tokenizer: PreTrainedTokenizerBase
) -> list[tuple[list[int], list[bool]]]:
    """Token ids of every training conversation, and which of them belong to a reply.

    Turns follow DESIGN.md §3 exactly: ``[BOS] + enc("[INST] {user} [/INST] {reply} ") + [EOS]``,
    ``enc`` being the tokenizer with ``add_special_tokens=False, split_special_tokens=True`` and
    the first turn's user text carrying the default system prompt. Every pair is a one-turn
    conversation, except that every third one is followed by the next pair as a second turn
    (which has no system block), so the model also answers after earlier turns. The loss is
    on the replies and their EOS only: the model learns to answer, not to ask.
    """
    every = _TRAIN_RECIPE["second_turn_every"]
    samples: list[tuple[list[int], list[bool]]] = []
    for index, (question, answer) in enumerate(pairs):
        turns = [_turn(tokenizer, question, answer, SYSTEM_PROMPT)]
        if index % every == 0 and index + 1 < len(pairs):
            turns.append(_turn(tokenizer, *pairs[index + 1], None))
        ids: list[int] = []
        reply: list[bool] = []
        for turn_ids, prompt_len in turns:
            ids += turn_ids
            reply += [False] * prompt_len + [True] * (len(turn_ids) - prompt_len)
        samples.append((ids, reply))
    return samples


def _recipe(train_steps: int, seed: int) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "tokenizer": _TOKENIZER_RECIPE,
        "model": _MODEL_RECIPE,
        "train": {**_TRAIN_RECIPE, "train_steps": train_steps, "seed": seed},
    }


def _build_key(train_steps: int = DEFAULT_TRAIN_STEPS, seed: int = 0) -> str:
    """Short hash of the corpus and the whole build recipe: any edit gives a new cache folder."""
    digest = hashlib.sha256(json.dumps(_recipe(train_steps, seed), sort_keys=True).encode())
    digest.update(CORPUS_PATH.read_bytes())
    return digest.hexdigest()[:12]


def _train_tokenizer(pairs: list[tuple[str, str]], work_dir: Path) -> PreTrainedTokenizerBase:
    """Train the sentencepiece model on the rendered samples; load it as a ``LlamaTokenizer``."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2
    from transformers import LlamaTokenizer

    texts = [_render(q, a, system) for q, a in pairs for system in (SYSTEM_PROMPT, None)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, minloglevel=2, **_TOKENIZER_RECIPE
    )
    # "▁" was user-defined only so that no piece merges it with what follows; made a normal piece
    # (no "▁X" piece exists, so encoding is unchanged) it is not listed as a special token by
    # transformers, just as in Llama-2.
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    for piece in proto.pieces:
        if piece.type == piece.USER_DEFINED:
            piece.type = piece.NORMAL
    del proto.trainer_spec.user_defined_symbols[:]
    (work_dir / "tokenizer.model").write_bytes(proto.SerializeToString())
    # transformers 5: LlamaTokenizer(vocab_file=...) silently encodes to nothing; from_pretrained
    # on a folder holding tokenizer.model converts it properly (needs sentencepiece + protobuf).
    # add_bos_token must be explicit: it defaults to False there. Once saved, tokenizer.json's
    # post-processor adds BOS (transformers 5 then reports add_bos_token=False, as for any repo).
    tokenizer = LlamaTokenizer.from_pretrained(str(work_dir), add_bos_token=True, add_eos_token=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token  # pad 0, as for Llama-2 (DESIGN.md §2)
    tokenizer.model_max_length = _MODEL_RECIPE["max_position_embeddings"]
    ids = tokenizer("日本語 です", add_special_tokens=False)["input_ids"]
    if (
        tokenizer.decode(ids) != "日本語 です"
        or tokenizer("日本語")["input_ids"][0] != BOS_ID
        or tokenizer.pad_token_id != PAD_ID
        or "▁" in tokenizer.all_special_tokens
    ):
        raise RuntimeError("the converted demo tokenizer does not behave like Llama-2's")
    return tokenizer


def _batches(samples: list[tuple[list[int], list[bool]]], batch_size: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Fixed batches of similar length (little padding): input ids, attention mask, targets.

    ``targets[:, t]`` is the token at ``t + 1`` where that token belongs to a reply, else -100.
    """
    import torch

    order = sorted(range(len(samples)), key=lambda i: (len(samples[i][0]), i))
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = [samples[i] for i in order[start : start + batch_size]]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), PAD_ID, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        targets = torch.full((len(chunk), width), -100, dtype=torch.long)
        for row, (ids, reply) in enumerate(chunk):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
            targets[row, : len(ids) - 1] = torch.tensor(
                [t if r else -100 for t, r in zip(ids[1:], reply[1:], strict=True)]
            )
        batches.append((input_ids, attention, targets))
    return batches


def _reply_loss(model: LlamaForCausalLM, input_ids: Tensor, attention: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over the reply tokens, running the LM head on those positions only.

    Same value as ``model(..., labels=...).loss`` with the prompt masked, ~20% less compute.
    """
    import torch.nn.functional as F

    hidden = model.model(input_ids=input_ids, attention_mask=attention).last_hidden_state
    keep = targets != -100
    logits = model.lm_head(hidden[keep])
    return F.cross_entropy(logits, targets[keep])


def _train_model(
    samples: list[tuple[list[int], list[bool]]], vocab_size: int, train_steps: int, seed: int
) -> LlamaForCausalLM:
    """A fresh tiny Llama, trained with AdamW on ``samples`` in a seeded, fixed order."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, **_MODEL_RECIPE
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.train()
    batches = _batches(samples, _TRAIN_RECIPE["batch_size"])
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=_TRAIN_RECIPE["lr"],
        betas=_TRAIN_RECIPE["betas"],
        weight_decay=_TRAIN_RECIPE["weight_decay"],
    )
    warmup, floor = _TRAIN_RECIPE["warmup_steps"], _TRAIN_RECIPE["min_lr_ratio"]

    def lr_factor(step: int) -> float:
        cosine = 0.5 * (1 + math.cos(math.pi * min(step, train_steps) / max(train_steps, 1)))
        return min(1.0, (step + 1) / warmup) * (floor + (1 - floor) * cosine)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    order = torch.Generator().manual_seed(seed)
    step = 0
    while step < train_steps:
        for index in torch.randperm(len(batches), generator=order).tolist():
            if step >= train_steps:
                break
            _reply_loss(model, *batches[index]).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), _TRAIN_RECIPE["grad_clip"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
    model.eval()
    return model


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


def build_demo_model(out_dir: Path, *, train_steps: int = DEFAULT_TRAIN_STEPS, seed: int = 0) -> None:
    """Train the tokenizer and the tiny model and save both (plus a README) into ``out_dir``.

    Deterministic for a given corpus, ``train_steps``, ``seed`` and CPU; needs no network.
    The caller's torch RNG state and thread count are left as they were.
    """
    import torch
    from transformers import GenerationConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    logger.info("Building the offline demo model (%d steps) in %s", train_steps, out_dir)
    started = time.perf_counter()
    pairs = load_corpus()
    threads = torch.get_num_threads()
    torch.set_num_threads(_TRAIN_RECIPE["torch_threads"])
    try:
        with tempfile.TemporaryDirectory(prefix="jslm-demo-tok-") as work, torch.random.fork_rng(devices=[]):
            tokenizer = _train_tokenizer(pairs, Path(work))
            samples = training_samples(pairs, tokenizer)
            model = _train_model(samples, len(tokenizer), train_steps, seed)
            model.generation_config = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
            model.save_pretrained(out_dir)  # model.safetensors, float32
            tokenizer.save_pretrained(out_dir)
            # The real model repos ship tokenizer.model too; tokenizer.json is what gets loaded.
            shutil.copyfile(Path(work) / "tokenizer.model", out_dir / "tokenizer.model")
    finally:
        torch.set_num_threads(threads)
    (out_dir / "README.md").write_text(
        _README.format(
            params=sum(p.numel() for p in model.parameters()),
            vocab=len(tokenizer),
            pairs=len(pairs),
            steps=train_steps,
            seed=seed,
            system=SYSTEM_PROMPT,
            key=_build_key(train_steps, seed),
        ),
        encoding="utf-8",
    )
    logger.info("Built the demo model in %.1f s: %s", time.perf_counter() - started, out_dir)


def _default_cache_root() -> Path:
    env = os.environ.get("JSLM_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "jslm-chat"


def _is_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in _MODEL_FILES)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing); a no-op without fcntl."""
    if fcntl is None:
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def demo_model_dir(cache_dir: Path | None = None) -> Path:
    """The folder of the built demo model, building it (20-25 s) on first use.

    ``cache_dir`` defaults to ``$JSLM_CACHE_DIR`` or ``~/.cache/jslm-chat``; the model lives in a
    subfolder named after a hash of the corpus and the build recipe, so edits rebuild it. The
    build goes to a temporary folder that is renamed into place, under a file lock, so several
    processes can ask at once and none ever sees a half-written model.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_root()
    target = root / f"demo-model-{_build_key()}"
    if _is_complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root / f".{target.name}.lock"):
        if _is_complete(target):
            return target
        if target.exists():  # a damaged leftover: start again
            shutil.rmtree(target)
        if fcntl is not None:  # under the lock, partial builds of this target are from killed processes
            for stale in root.glob(f".{target.name}.*.partial"):
                shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=root))
        try:
            build_demo_model(staging)
            for path in (staging, *staging.iterdir()):  # mkdtemp and safetensors make them private
                path.chmod(0o755 if path.is_dir() else 0o644)
            try:
                os.rename(staging, target)
            except OSError:
                if not _is_complete(target):  # without a lock, another process may have won
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    """CLI: build the demo model (into ``--out`` or the cache) and print its folder."""
    parser = argparse.ArgumentParser(
        prog="python -m jslm_chat.demo_model",
        description="Build the tiny offline Japanese demo model and print its folder.",
    )
    parser.add_argument("--out", type=Path, help="folder to build into (default: the cache, reused if built)")
    parser.add_argument("--steps", type=int, default=DEFAULT_TRAIN_STEPS, help="training steps")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    if args.steps < 0:
        parser.error("--steps must be >= 0")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.out is None:
        if (args.steps, args.seed) != (DEFAULT_TRAIN_STEPS, 0):
            parser.error("--steps/--seed need --out (the cache holds the default build only)")
        path = demo_model_dir()
    else:
        build_demo_model(args.out, train_steps=args.steps, seed=args.seed)
        path = args.out
    print(path.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
