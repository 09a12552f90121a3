"""Compare transformers' TextIteratorStreamer with JapaneseTextStreamer on Japanese text.

Run: `python bench/bench_streaming.py`. Uses a Llama-style sentencepiece tokenizer (byte fallback)
trained here on kana and a few kanji, so most kanji fall back to `<0xNN>` bytes as rarer kanji do
in the real Llama-2 vocabulary. Prints, for each streamer: the share of tokens whose put() releases
every character completed so far, the longest any character waited (tokens), and the wall time
per token for single-paragraph replies of 500 / 2000 / 8000 tokens.
"""

from __future__ import annotations

import io
import queue
import sys
import tempfile
import time
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import LlamaTokenizer, TextIteratorStreamer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jslm_chat.backends.inprocess.streamer import JapaneseTextStreamer

KANA_CORPUS = [
    "こんにちは、きょうはいいてんきですね！さんぽにいきましょうか？「はい」とかれはいった。",
    "わたしはねこがすきです。あなたはいぬがすきですか？コーヒーとケーキをください。",
    "日本の人は、この本を読みます。ありがとうございます。Hello, world! 123",
]

TEXT = """\
おはようございます。今日は朝から雨が降っていますね。傘を忘れずに持って行ってください。
週末の予定について相談させてください。土曜日は午前中に買い物をして、午後は映画を見に行こうと思っています。
「どの映画がいいですか？」と友達に聞かれたので、最近話題になっている恋愛映画を勧めました。
日曜日は家でゆっくり過ごします。掃除と洗濯を済ませてから、新しい料理に挑戦するつもりです！
ところで、来月の出張の件ですが、新幹線の切符はもう予約しましたか？ まだでしたら、私が手配しておきます。
会議の資料は三部印刷して、受付に置いておいてください。不明な点があれば、遠慮なく連絡してください。
最近、健康のために毎朝三十分ほど散歩をしています。季節の移り変わりを感じられて、とても気持ちがいいです。
子供の頃に住んでいた町を久しぶりに訪れました。駅前の商店街はすっかり様変わりしていて、少し寂しく感じました。
"""


def train_tokenizer(corpus: list[str], vocab_size: int = 400) -> LlamaTokenizer:
    """A Llama-style sentencepiece BPE with byte fallback, trained on `corpus`."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, hard_vocab_limit=False, normalization_rule_name="identity",
        minloglevel=2,
    )  # fmt: skip
    folder = Path(tempfile.mkdtemp())
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    return LlamaTokenizer.from_pretrained(folder)


def completed_lengths(tok: LlamaTokenizer, ids: list[int]) -> list[int]:
    """After each token: how many characters are complete (all their bytes are in)."""
    data, lengths = b"", []
    for piece in tok.convert_ids_to_tokens(ids):
        is_byte = piece.startswith("<0x") and piece.endswith(">")
        data += bytes([int(piece[3:-1], 16)]) if is_byte else piece.replace("▁", " ").encode()
        text = data.decode("utf-8", errors="ignore")
        lengths.append(len(text) - text.startswith(" "))  # the decoder strips the first leading space
    return lengths


def released_lengths(streamer: TextIteratorStreamer, ids: list[int]) -> tuple[list[int], float]:
    """Feed a prompt then `ids` one at a time; characters released after each put, and seconds taken."""
    streamer.put(torch.tensor([[1]]))
    released, lengths, seconds = 0, [], 0.0
    for token_id in ids:
        start = time.perf_counter()
        streamer.put(torch.tensor([token_id]))
        seconds += time.perf_counter() - start
        while True:
            try:
                released += len(streamer.text_queue.get_nowait() or "")
            except queue.Empty:
                break
        lengths.append(released)
    streamer.end()
    return lengths, seconds


def timeliness(done: list[int], released: list[int]) -> tuple[float, int]:
    """Share of tokens after which every completed character is out; longest wait of a character."""
    on_time = sum(r >= d for r, d in zip(released, done, strict=True)) / len(done)
    longest, done_at, out = 0, [], 0  # done_at[c]: the step that completed character c
    for step, (d, r) in enumerate(zip(done, released, strict=True)):
        done_at += [step] * (d - len(done_at))
        longest = max([longest, *(step - done_at[c] for c in range(out, min(r, len(done_at))))])
        out = max(out, r)
    return on_time, longest


def main() -> None:
    tok = train_tokenizer(KANA_CORPUS)
    streamers = {"TextIteratorStreamer": TextIteratorStreamer, "JapaneseTextStreamer": JapaneseTextStreamer}
    reply = tok.encode(TEXT, add_special_tokens=False)
    pieces = tok.convert_ids_to_tokens(reply)
    byte_share = sum(p.startswith("<0x") for p in pieces) / len(pieces)
    print(f"tokenizer: {len(tok)} pieces; reply: {len(reply)} tokens, {byte_share:.0%} byte-fallback tokens")

    done = completed_lengths(tok, reply)
    print(f"\n{'':22}{'on time':>9}{'longest wait (tokens)':>24}")
    for name, cls in streamers.items():
        on_time, longest = timeliness(done, released_lengths(cls(tok, skip_prompt=True), reply)[0])
        print(f"{name:22}{on_time:>9.1%}{longest:>24}")

    paragraph = tok.encode(TEXT.replace("\n", ""), add_special_tokens=False)  # the parent resets at "\n"
    print(f"\nwall time per token, one paragraph (µs)\n{'':22}" + "".join(f"{n:>9}" for n in (500, 2000, 8000)))
    for name, cls in streamers.items():
        row = ""
        for n in (500, 2000, 8000):
            ids = (paragraph * (n // len(paragraph) + 1))[:n]
            _, seconds = released_lengths(cls(tok, skip_prompt=True), ids)
            row += f"{seconds / n * 1e6:>9.0f}"
        print(f"{name:22}{row}")


if __name__ == "__main__":
    main()
