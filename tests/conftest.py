"""Shared test setup: never touch the network; share one demo model across the session."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from jslm_chat.chat.service import ChatService
    from jslm_chat.model.backend import Backend, Conversation, ReplyStream
    from jslm_chat.model.params import GenerationParams

SAMPLE_JA = (
    "こんにちは。今日はいい天気ですね。散歩に行きましょう！\n"
    "「情けは人のためならず」は、人に親切にすると巡り巡って自分に良いことが返ってくる、という意味です。\n"
    "東京は日本の首都です。京都には古いお寺がたくさんあります。\n"
    "日本語の文章には、ひらがな・カタカナ・漢字が使われます。\n"
    "Hello, world! 123 + 456 = 579.\n"
)


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


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_app(backend: Backend, **settings: Any) -> tuple[Any, str, ChatService]:
    """The app as ``app.py`` serves it, on a free local port, without blocking: (app, url, service)."""
    from jslm_chat.server import create_app, launch
    from jslm_chat.settings import Settings

    chosen = Settings(**{"demo": True, "host": "127.0.0.1", "port": free_port(), **settings})
    app, service = create_app(chosen, backend=backend)
    _, url, _ = launch(app, service, chosen, block=False)
    return app, url, service


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
def paced_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each decoding step takes at least 5 ms, as on real hardware, so streaming tests do not depend
    on how fast this machine runs the tiny models (a fast model can finish before a reader wakes)."""
    import time

    from jslm_chat.backends.inprocess import generation

    step = generation._StopAndCount.__call__

    def paced_step(self: object, *args: object, **kwargs: object) -> object:
        time.sleep(0.005)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(generation._StopAndCount, "__call__", paced_step)


def greedy(max_new_tokens: int = 24, *, ignore_eos: bool = True) -> GenerationParams:
    """Greedy decoding; replies run to their full length (EOS ignored) so that there is text to compare."""
    from jslm_chat.model.params import GenerationParams

    return GenerationParams(max_new_tokens, 0.0, 1.0, 0, 1.0, 0, ignore_eos=ignore_eos)


def answer(backend: Backend, conversation: Conversation, params: GenerationParams | None = None) -> ReplyStream:
    """The finished reply of ``backend`` to ``conversation``."""
    reply = backend.stream(conversation, params or greedy())
    for _ in reply:
        pass
    assert reply.finish_reason in ("eos", "length")
    return reply


def generation_threads() -> list[object]:
    """Generation threads still alive in this process."""
    import threading

    return [thread for thread in threading.enumerate() if thread.name == "jslm-generate" and thread.is_alive()]


def wait_until(condition: object, timeout: float, interval: float = 0.02) -> bool:
    """Poll ``condition()`` until it is true or ``timeout`` seconds pass; return its last value."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())
