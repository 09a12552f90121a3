"""Streaming decoded text for Japanese: every completed character out on time, never U+FFFD.

`transformers.TextIteratorStreamer` holds text back after any symbol (`、。！？「」`, fullwidth forms,
an incomplete byte-fallback character) until the next space, kanji or newline, and re-decodes the
whole line on every token. `JapaneseTextStreamer` is a drop-in replacement that releases each
character on the `put()` that completes it, holds back only an incomplete UTF-8 sequence, and
decodes a short window of recent tokens (TGI/vLLM style), so streaming costs linear time.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase, TextIteratorStreamer

REPLACEMENT = "\ufffd"  # what a tokenizer decodes an incomplete or invalid UTF-8 sequence to


class JapaneseTextStreamer(TextIteratorStreamer):
    """`TextIteratorStreamer` that releases every completed character as soon as it is complete.

    Iterate over it to get text chunks (never empty, never containing U+FFFD); their concatenation is
    `tokenizer.decode(generated_ids, **decode_kwargs)` with any U+FFFD removed. As `generate()` does,
    the first `put()` of each stream is the prompt: skipped when `skip_prompt`, and never counted in
    `generated_token_count`. The tokenizer's decode must be prefix-stable (true of Llama and byte-level
    BPE with the default `clean_up_tokenization_spaces=False`).

    Attributes:
        generated_token_count: non-prompt tokens received in the current (or last) stream.
    """

    CONTEXT_TOKENS = 4  # tokens of already-released context kept in front of the window
    MAX_WINDOW = 12  # the window slides forward once it holds more tokens than this

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        skip_prompt: bool = True,
        timeout: float | None = None,
        **decode_kwargs: Any,
    ) -> None:
        super().__init__(tokenizer, skip_prompt, timeout, **decode_kwargs)
        self.generated_token_count = 0
        self._window: list[int] = []  # recent tokens: already-released context, then pending ones
        self._emitted = 0  # chars of decode(self._window) already released (or dropped as invalid)

    def put(self, value: Any) -> None:
        """Receive token ids (shape `(n,)` or `(1, n)`) and queue the characters they complete."""
        if len(value.shape) > 1 and value.shape[0] > 1:
            raise ValueError("JapaneseTextStreamer only supports batch size 1")
        ids: list[int] = (value[0] if len(value.shape) > 1 else value).tolist()

        if self.next_tokens_are_prompt:  # a new stream starts with its prompt
            self.next_tokens_are_prompt = False
            self._window, self._emitted, self.generated_token_count = [], 0, 0
            if self.skip_prompt:
                return
        else:
            self.generated_token_count += len(ids)

        self._window.extend(ids)
        text = self._decode(self._window)
        stable = text.rstrip(REPLACEMENT)  # a trailing U+FFFD may still become a character
        if stable != text and len(ids) > 1:
            stable = max(stable, self._completed_before(len(ids)), key=len)
        if len(stable) > self._emitted:
            # Any U+FFFD left in `stable` is an invalid sequence that no later token can fix: drop it.
            self.on_finalized_text(stable[self._emitted :].replace(REPLACEMENT, ""))
            self._emitted = len(stable)
        # Otherwise wait: with byte fallback, an incomplete character turns its whole run of byte
        # tokens into U+FFFD, so `stable` may briefly be shorter than what was already released.
        if len(self._window) > self.MAX_WINDOW and self._emitted == len(text):
            self._slide(text)

    def end(self) -> None:
        """End the stream: an incomplete trailing sequence is dropped, and iteration stops."""
        self._window, self._emitted = [], 0
        self.next_tokens_are_prompt = True
        self.on_finalized_text("", stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Queue `text` unless empty; at the end of the stream, queue the stop signal."""
        if text:
            self.text_queue.put(text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, **self.decode_kwargs)

    def _completed_before(self, new_tokens: int) -> str:
        """Decode the window without its last few tokens, up to the first text with nothing pending.

        With byte fallback, an incomplete character turns its whole run of byte tokens into U+FFFD,
        which hides the characters that earlier tokens of the same `put()` completed. An incomplete
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
