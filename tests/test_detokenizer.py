"""IncrementalDetokenizer's own API (its on-time release is tested through JapaneseTextStreamer)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import SAMPLE_JA

from jslm_chat.model.detokenizer import IncrementalDetokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_feed_returns_exactly_the_decoded_text_in_pieces_without_fffd(llama_tokenizer):
    ids = llama_tokenizer.encode(SAMPLE_JA, add_special_tokens=False)
    for step in (1, 2, 5):
        detokenizer = IncrementalDetokenizer(llama_tokenizer)
        pieces = [detokenizer.feed(ids[start : start + step]) for start in range(0, len(ids), step)]
        assert "".join(pieces) == llama_tokenizer.decode(ids) == SAMPLE_JA
        assert not any("\ufffd" in piece for piece in pieces)


def test_reset_drops_an_incomplete_character_and_starts_a_new_stream(llama_tokenizer):
    detokenizer = IncrementalDetokenizer(llama_tokenizer, skip_special_tokens=True)
    first_byte = llama_tokenizer.convert_tokens_to_ids("<0xE4>")  # starts a 3-byte character
    assert detokenizer.feed([*llama_tokenizer.encode("はい", add_special_tokens=False), first_byte]) == "はい"
    detokenizer.reset()
    reply = llama_tokenizer.encode("こんにちは。", add_special_tokens=False)
    assert detokenizer.feed([*reply, llama_tokenizer.eos_token_id]) == "こんにちは。"


def test_detokenizer_and_vllm_backend_import_neither_torch_nor_transformers():
    code = (
        "import sys, jslm_chat.model.detokenizer, jslm_chat.backends.vllm; "
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert result.stdout.strip() == "[]"
