"""JapaneseTextStreamer: on-time release, no U+FFFD, exact final text, linear work.

Tokenizers are built on the spot: Llama-style sentencepiece BPE with byte fallback (a small vocab
where most kanji fall back to `<0xNN>` bytes, as rarer kanji do in the real Llama-2 vocab, and a
bigger one with multi-character pieces), and a GPT-2 style byte-level BPE to show it is generic.
"""

from __future__ import annotations

import io
import queue
import threading

import pytest
import sentencepiece as spm
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaTokenizer, PreTrainedTokenizerFast, TextIteratorStreamer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from jslm_chat.backends.inprocess.streamer import JapaneseTextStreamer

FFFD = "\ufffd"
PUNCT = "、。！？「」"
BYTE_OF = {char: byte for byte, char in bytes_to_unicode().items()}  # byte-level BPE alphabet

# Kana, punctuation and a few everyday kanji: the small-vocab tokenizer is trained on this only,
# so every other kanji in TEXT falls back to bytes.
KANA_CORPUS = [
    "こんにちは、きょうはいいてんきですね！さんぽにいきましょうか？",
    "「はい」とかれはいった。ありがとうございます。どういたしまして。",
    "わたしはねこがすきです。あなたはいぬがすきですか？カタカナもつかいます。",
    "コーヒーとケーキをください。これはなんですか？それはほんです。",
    "日本の人は、この本を読みます。Hello, world! 123",
]

TEXT = (
    "こんにちは、今日はいい天気ですね！週末は京都へ旅行に行きました。\n"
    "「清水寺の紅葉が綺麗でした」と彼女は言いました。薔薇や檸檬、憂鬱、顰蹙、魑魅魍魎のような難しい漢字も"
    "書けますか？ 明日の会議は午前十時からです。資料の準備をお願いします。\n"
    "コーヒーを飲みながら、小説を読むのが好きです。富士山に登ったことはありますか？ Python 3.12 で動きます。"
)


def _train_sentencepiece(tmp_path, corpus: list[str], vocab_size: int) -> LlamaTokenizer:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, hard_vocab_limit=False, split_digits=True,
        normalization_rule_name="identity", minloglevel=2,
    )  # fmt: skip
    (tmp_path / "tokenizer.model").write_bytes(model.getvalue())
    return LlamaTokenizer.from_pretrained(tmp_path)  # LlamaTokenizer(vocab_file=...) encodes to nothing


def _train_byte_level(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def toks(tmp_path_factory) -> dict:
    return {
        "llama-small": _train_sentencepiece(tmp_path_factory.mktemp("small"), KANA_CORPUS, 400),
        "llama-big": _train_sentencepiece(tmp_path_factory.mktemp("big"), [*KANA_CORPUS, *TEXT.splitlines()], 1000),
        "byte-level": _train_byte_level([*KANA_CORPUS, *TEXT.splitlines()], 320),
    }


@pytest.fixture(scope="module")
def small(toks) -> LlamaTokenizer:
    return toks["llama-small"]


def _token_bytes(tok, token_id: int) -> bytes:
    """The UTF-8 bytes one token stands for (special tokens: none)."""
    if token_id in tok.all_special_ids:
        return b""
    piece = tok.convert_ids_to_tokens(token_id)
    if isinstance(tok, LlamaTokenizer):
        if piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:-1], 16)])
        return piece.replace("▁", " ").encode()
    return bytes(BYTE_OF[char] for char in piece)


def completed_text(tok, ids: list[int]) -> str:
    """Every character whose bytes are all in `ids` (decoded independently of the streamer)."""
    text = b"".join(_token_bytes(tok, i) for i in ids).decode("utf-8", errors="ignore")
    if isinstance(tok, LlamaTokenizer) and text.startswith(" "):
        text = text[1:]  # the Llama decoder strips the first leading space
    return text


def _drain(streamer) -> list[str]:
    chunks = []
    while True:
        try:
            chunk = streamer.text_queue.get_nowait()
        except queue.Empty:
            return chunks
        if chunk is not None:
            chunks.append(chunk)


def stream(streamer, ids: list[int], prompt: list[int] | None = None, step: int = 1):
    """Feed a prompt then `ids`, `step` tokens per put() as generate() does.

    Returns (released text after each put, all chunks including those queued by end()).
    """
    streamer.put(torch.tensor([prompt or [1, 2, 3]]))
    released, chunks = [], _drain(streamer)
    for start in range(0, len(ids), step):
        streamer.put(torch.tensor(ids[start : start + step]))
        chunks += _drain(streamer)
        released.append("".join(chunks))
    streamer.end()
    chunks += _drain(streamer)
    return released, chunks


def _encode(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def _byte_id(tok, byte: int) -> int:
    return tok.convert_tokens_to_ids(f"<0x{byte:02X}>")


def test_fixture_tokenizers_are_what_the_tests_need(toks):
    small_ids = _encode(toks["llama-small"], TEXT)
    pieces = toks["llama-small"].convert_ids_to_tokens(small_ids)
    assert sum(p.startswith("<0x") for p in pieces) > len(pieces) / 3  # most kanji fall back to bytes
    big = toks["llama-big"]
    assert any(len(p.strip("▁")) > 1 for p in big.convert_ids_to_tokens(_encode(big, TEXT)))
    byte_level = toks["byte-level"]
    ids = _encode(byte_level, TEXT)
    assert any(FFFD in byte_level.decode([i]) for i in ids)  # some tokens split a character
    for tok in toks.values():
        assert tok.decode(_encode(tok, TEXT)) == TEXT


@pytest.mark.parametrize("name", ["llama-small", "llama-big", "byte-level"])
@pytest.mark.parametrize("step", [1, 3])
def test_every_completed_character_is_released_on_time(toks, name, step):
    tok = toks[name]
    ids = _encode(tok, TEXT)
    released, chunks = stream(JapaneseTextStreamer(tok), ids, step=step)
    for n, text in enumerate(released, start=1):
        assert text == completed_text(tok, ids[: n * step]), f"after put #{n}"
    assert all(chunks) and not any(FFFD in chunk for chunk in chunks)
    assert "".join(chunks) == tok.decode(ids) == TEXT


def test_parent_holds_punctuation_back_ours_does_not(small):
    ids = _encode(small, TEXT)
    ours, _ = stream(JapaneseTextStreamer(small), ids)
    parent, parent_chunks = stream(TextIteratorStreamer(small, skip_prompt=True), ids)
    assert "".join(parent_chunks) == TEXT
    late_punct = late = 0
    for n, (mine, theirs) in enumerate(zip(ours, parent, strict=True), start=1):
        done = completed_text(small, ids[:n])
        assert mine == done
        late += theirs != done
        if done[-1] in PUNCT:
            assert mine.endswith(done[-1])
            late_punct += not theirs.endswith(done[-1])
    assert late_punct >= 5  # the parent waits for a space, kanji or newline after 、。！？「」
    assert late > len(ids) / 10


def test_first_leading_space_is_stripped_like_decode(small):
    ids = _encode(small, " はい、そうです。")
    assert small.convert_ids_to_tokens(ids[0]).startswith("▁")
    _, chunks = stream(JapaneseTextStreamer(small), ids)
    assert "".join(chunks) == small.decode(ids) == "はい、そうです。"


def test_lone_invalid_byte_in_the_middle_is_dropped(small):
    ids = _encode(small, "はい、そうです。")
    pieces = small.convert_ids_to_tokens(ids)
    at = pieces.index("、") + 1
    bad = [*ids[:at], _byte_id(small, 0x81), *ids[at:]]
    assert FFFD in small.decode(bad)
    _, chunks = stream(JapaneseTextStreamer(small), bad)
    assert not any(FFFD in chunk for chunk in chunks)
    assert "".join(chunks) == small.decode(bad).replace(FFFD, "") == "はい、そうです。"


def test_lone_invalid_byte_after_a_byte_fallback_character_keeps_that_character(small):
    ids = _encode(small, "今日は")
    at = small.convert_ids_to_tokens(ids).index("<0x8A>") + 1  # after <0xE4> <0xBB> <0x8A>: 今
    bad = [*ids[:at], _byte_id(small, 0x81), *ids[at:]]
    released, chunks = stream(JapaneseTextStreamer(small), bad)
    assert released[at - 1] == "今"  # on time, as its last byte arrives
    assert not any(FFFD in chunk for chunk in chunks)
    assert "".join(chunks) == "今日は"
    # decode() turns the whole byte run, 今 included, into U+FFFD: nothing can take 今 back now.
    assert small.decode(bad) == FFFD * 4 + "日は"


def test_lone_invalid_byte_in_byte_level_text_is_dropped(toks):
    tok = toks["byte-level"]
    lone = tok.convert_tokens_to_ids(bytes_to_unicode()[0x81])
    ids = [*_encode(tok, "今日は"), lone, *_encode(tok, "晴れ。")]
    _, chunks = stream(JapaneseTextStreamer(tok), ids)
    assert not any(FFFD in chunk for chunk in chunks)
    assert "".join(chunks) == tok.decode(ids).replace(FFFD, "") == "今日は晴れ。"


def test_trailing_incomplete_sequence_is_dropped_at_end(small):
    ids = [*_encode(small, "今日は晴れ"), _byte_id(small, 0xE3), _byte_id(small, 0x81)]  # "ぁ" cut short
    released, chunks = stream(JapaneseTextStreamer(small), ids)
    assert released[-1] == "今日は晴れ"
    assert not any(FFFD in chunk for chunk in chunks)
    assert "".join(chunks) == "今日は晴れ"


def test_skip_special_tokens_hides_eos(small):
    ids = [*_encode(small, "はい。"), small.eos_token_id]
    _, hidden = stream(JapaneseTextStreamer(small, skip_special_tokens=True), ids)
    _, shown = stream(JapaneseTextStreamer(small), ids)
    assert "".join(hidden) == small.decode(ids, skip_special_tokens=True) == "はい。"
    assert "".join(shown) == small.decode(ids) == "はい。</s>"


def test_prompt_is_skipped_by_default_and_never_counted(small):
    prompt, reply = _encode(small, "質問:"), _encode(small, "答えです。")
    skipping = JapaneseTextStreamer(small)
    _, chunks = stream(skipping, reply, prompt=prompt)
    assert "".join(chunks) == "答えです。"
    assert skipping.generated_token_count == len(reply)
    keeping = JapaneseTextStreamer(small, skip_prompt=False)
    _, chunks = stream(keeping, reply, prompt=prompt)
    assert "".join(chunks) == small.decode(prompt + reply)
    assert keeping.generated_token_count == len(reply)


def test_put_shapes_and_batch_size(small):
    streamer = JapaneseTextStreamer(small)
    streamer.put(torch.tensor([[1, 2]]))  # prompt, (1, n)
    ids = _encode(small, "はい。")
    streamer.put(torch.tensor([ids[:-1]]))  # (1, n)
    streamer.put(torch.tensor(ids[-1:]))  # (n,)
    assert "".join(_drain(streamer)) == "はい。"
    with pytest.raises(ValueError, match="batch size 1"):
        streamer.put(torch.tensor([[5], [6]]))


def test_timeout_raises_queue_empty(small):
    streamer = JapaneseTextStreamer(small, timeout=0.01)
    with pytest.raises(queue.Empty):
        next(iter(streamer))


def _generate(streamer, ids: list[int]) -> None:
    streamer.put(torch.tensor([[1]]))
    for token_id in ids:
        streamer.put(torch.tensor([token_id]))
    streamer.end()


def test_iterates_across_threads_and_streams(small):
    streamer = JapaneseTextStreamer(small, timeout=5)
    for text in ("一つ目の返事です。", "「二つ目」！"):
        ids = _encode(small, text)
        worker = threading.Thread(target=_generate, args=(streamer, ids))
        worker.start()
        assert "".join(streamer) == text  # stops at end(); the streamer can be reused
        worker.join()
        assert streamer.generated_token_count == len(ids)


class _CountingTokenizer:
    """Wraps a tokenizer, counting how many tokens were decoded in total."""

    def __init__(self, tok) -> None:
        self.tok, self.decoded = tok, 0

    def decode(self, ids, **kwargs):
        self.decoded += len(ids)
        return self.tok.decode(ids, **kwargs)


def _decoded_tokens(streamer_class, tok, ids: list[int]) -> int:
    counter = _CountingTokenizer(tok)
    streamer = streamer_class(counter, skip_prompt=True)
    stream(streamer, ids)
    return counter.decoded


def test_decoding_work_is_linear_in_reply_length(small):
    line = _encode(small, TEXT.replace("\n", ""))  # no newline: the parent never resets its cache
    reply = (line * (4000 // len(line) + 1))[:4000]
    ours_2k = _decoded_tokens(JapaneseTextStreamer, small, reply[:2000])
    ours_4k = _decoded_tokens(JapaneseTextStreamer, small, reply)
    assert ours_2k < 20 * 2000
    assert ours_4k < 2.2 * ours_2k  # linear, not quadratic
    parent_2k = _decoded_tokens(TextIteratorStreamer, small, reply[:2000])
    assert parent_2k > 500 * 2000  # the parent re-decodes everything, every token
