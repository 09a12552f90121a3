"""Shared fixtures: never touch the network; one demo model per session. Plain helpers: ``helpers.py``."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from helpers import SAMPLE_JA
from vllm_server import long_context_vllm_server, vllm_server  # noqa: F401  (fixtures: one server each per session)

if TYPE_CHECKING:
    from jslm_chat.model.backend import Backend, Conversation, ReplyStream
    from jslm_chat.model.params import GenerationParams


def train_llama_tokenizer(directory: Path, text: str, vocab_size: int) -> object:
    """A Llama-style sentencepiece BPE tokenizer (byte fallback) trained on ``text``, loaded by transformers."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    corpus = directory / "corpus.txt"
    corpus.write_text(text * 3, encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(directory / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=0.98,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        normalization_rule_name="identity",
        num_threads=1,
        minloglevel=2,
    )
    return LlamaTokenizer.from_pretrained(str(directory))


@pytest.fixture(scope="session")
def llama_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> object:
    """A small Llama-2-style tokenizer: many kanji fall back to bytes, as in the real vocabulary."""
    return train_llama_tokenizer(tmp_path_factory.mktemp("llama_tokenizer"), SAMPLE_JA, vocab_size=400)


def build_tiny_model(directory: Path, tokenizer: object, *, max_position_embeddings: int = 512) -> Path:
    """A random-weight Llama (hidden 64, 2 layers) saved with ``tokenizer``: loads like a hub model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, llama_tokenizer: object) -> Path:
    """A local model directory outside the repository: random tiny Llama + small tokenizer."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"), llama_tokenizer)


@pytest.fixture(scope="session")
def demo_model_path() -> Path:
    """The demo model in the default cache (``$JSLM_CACHE_DIR`` or ~/.cache/jslm-chat), built once."""
    from jslm_chat.demo_model import demo_model_dir

    return demo_model_dir()


@pytest.fixture(scope="session")
def demo_engine(demo_model_path: Path) -> object:
    """The offline demo model, loaded exactly as ``python app.py --demo`` loads it."""
    from jslm_chat.server import load_for
    from jslm_chat.settings import Settings

    return load_for(Settings(demo=True))


@pytest.fixture
def endless_replies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reply runs to max_new_tokens (the ``ignore_eos`` option forced on), so there is a long
    generation to stop, also for requests from the browser, which never sets that option."""
    import dataclasses

    from jslm_chat.model.backend import Backend

    original = Backend.stream

    def endless(self: Backend, conversation: Conversation, params: GenerationParams) -> ReplyStream:
        return original(self, conversation, dataclasses.replace(params, ignore_eos=True))

    monkeypatch.setattr(Backend, "stream", endless)


@pytest.fixture
def paced_generation() -> Iterator[None]:
    """Each forward pass of a causal LM takes at least 5 ms, as on real hardware, so streaming tests do not
    depend on how fast this machine runs the tiny models (a fast model can finish before a reader wakes)."""
    import time

    from torch.nn.modules.module import register_module_forward_pre_hook

    def pace(module: object, args: object) -> None:
        if type(module).__name__.endswith("ForCausalLM"):
            time.sleep(0.005)

    handle = register_module_forward_pre_hook(pace)
    yield
    handle.remove()
