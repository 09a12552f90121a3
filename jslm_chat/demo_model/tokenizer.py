"""Train the demo model's sentencepiece BPE tokenizer and load it as a Llama-2-like tokenizer."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from jslm_chat.demo_model.corpus import tokenizer_texts
from jslm_chat.demo_model.recipe import BOS_ID, MODEL_RECIPE, PAD_ID, TOKENIZER_RECIPE

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def _train_sentencepiece(pairs: list[tuple[str, str]]) -> bytes:
    """The serialised sentencepiece model, with "▁" turned back into a normal piece."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tokenizer_texts(pairs)), model_writer=model, minloglevel=2, **TOKENIZER_RECIPE
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
    return proto.SerializeToString()


def train_tokenizer(pairs: list[tuple[str, str]], work_dir: Path) -> PreTrainedTokenizerBase:
    """Train the tokenizer on the rendered turns into ``work_dir/tokenizer.model``; load it."""
    from transformers import LlamaTokenizer

    (work_dir / "tokenizer.model").write_bytes(_train_sentencepiece(pairs))
    # transformers 5: LlamaTokenizer(vocab_file=...) silently encodes to nothing; from_pretrained
    # on a folder holding tokenizer.model converts it properly (needs sentencepiece + protobuf).
    # add_bos_token must be explicit: it defaults to False there. Once saved, tokenizer.json's
    # post-processor adds BOS (transformers 5 then reports add_bos_token=False, as for any repo).
    tokenizer = LlamaTokenizer.from_pretrained(str(work_dir), add_bos_token=True, add_eos_token=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token  # pad id 0, as the Llama-2 models use
    tokenizer.model_max_length = MODEL_RECIPE["max_position_embeddings"]
    ids = tokenizer("日本語 です", add_special_tokens=False)["input_ids"]
    if (
        tokenizer.decode(ids) != "日本語 です"
        or tokenizer("日本語")["input_ids"][0] != BOS_ID
        or tokenizer.pad_token_id != PAD_ID
        or "▁" in tokenizer.all_special_tokens
    ):
        raise RuntimeError("the converted demo tokenizer does not behave like Llama-2's")
    return tokenizer
