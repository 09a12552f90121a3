"""Incremental decoding for Japanese: token ids in, each completed character out on time, never U+FFFD.

:class:`IncrementalDetokenizer` is pure (no torch, no transformers import): feed it token ids as
they are generated and it returns the text they complete. It holds back only an incomplete UTF-8
sequence and decodes a short window of recent tokens (TGI/vLLM style), so streaming costs linear
time. Both backends decode through it: the in-process one via ``JapaneseTextStreamer``, the vLLM
one on the token ids the server streams.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

REPLACEMENT = "\ufffd"  # what a tokenizer decodes an incomplete or invalid UTF-8 sequence to


class Decoder(Protocol):
    """What incremental decoding needs from a tokenizer."""

    def decode(self, token_ids: list[int], **kwargs: Any) -> str: ...


class IncrementalDetokenizer:
    """Turns a stream of token ids into text, releasing every character on the ids that complete it.

    The concatenation of everything :meth:`feed` returns is ``tokenizer.decode(ids, **decode_kwargs)``
    with any U+FFFD removed. The tokenizer's decode must be prefix-stable (true of Llama and
    byte-level BPE with the default ``clean_up_tokenization_spaces=False``).
    """

    CONTEXT_TOKENS = 4  # tokens of already-released context kept in front of the window
    MAX_WINDOW = 12  # the window slides forward once it holds more tokens than this

    def __init__(self, tokenizer: Decoder, **decode_kwargs: Any) -> None:
        self.tokenizer = tokenizer
        self.decode_kwargs = decode_kwargs
        self._window: list[int] = []  # recent tokens: already-released context, then pending ones
        self._emitted = 0  # chars of decode(self._window) already released (or dropped as invalid)

    def feed(self, ids: Sequence[int]) -> str:
        """Take the next generated token ids; return the text they complete (may be empty)."""
        ids = list(ids)
        self._window.extend(ids)
        text = self._decode(self._window)
        stable = text.rstrip(REPLACEMENT)  # a trailing U+FFFD may still become a character
        if stable != text and len(ids) > 1:
            stable = max(stable, self._completed_before(len(ids)), key=len)
        released = ""
        if len(stable) > self._emitted:
            # Any U+FFFD left in `stable` is an invalid sequence that no later token can fix: drop it.
            released = stable[self._emitted :].replace(REPLACEMENT, "")
            self._emitted = len(stable)
        # Otherwise wait: with byte fallback, an incomplete character turns its whole run of byte
        # tokens into U+FFFD, so `stable` may briefly be shorter than what was already released.
        if len(self._window) > self.MAX_WINDOW and self._emitted == len(text):
            self._slide(text)
        return released

    def reset(self) -> None:
        """End the stream and start afresh: an incomplete trailing sequence is dropped.

        Every completed character was already returned by :meth:`feed`, so nothing is left to flush.
        """
        self._window, self._emitted = [], 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, **self.decode_kwargs)

    def _completed_before(self, new_tokens: int) -> str:
        """Decode the window without its last few tokens, up to the first text with nothing pending.

        With byte fallback, an incomplete character turns its whole run of byte tokens into U+FFFD,
        which hides the characters that earlier tokens of the same feed completed. An incomplete
        UTF-8 sequence is at most 3 bytes, so dropping up to 3 tokens is enough.
        """
        for drop in range(1, min(new_tokens, 4)):
            head = self._decode(self._window[:-drop])
            if not head.endswith(REPLACEMENT):
                return head
        return ""

    def _slide(self, text: str) -> None:
        """Drop released tokens from the window, keeping a few as context for the decoder.

        A cut is only taken where the shorter window decodes to the tail of `text`: never in the
        middle of a character (a leading continuation byte would decode to U+FFFD). A leading space
        that the decoder strips from the shorter window is fine: it was released already.
        """
        n = len(self._window)
        for cut in range(n - self.CONTEXT_TOKENS, n - 2 * self.CONTEXT_TOKENS, -1):
            tail = self._decode(self._window[cut:])
            if text.endswith(tail):
                self._window, self._emitted = self._window[cut:], len(tail)
                return
