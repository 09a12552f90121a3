"""Streaming decoded text for Japanese: every completed character out on time, never U+FFFD.

`transformers.TextIteratorStreamer` holds text back after any symbol (`、。！？「」`, fullwidth forms,
an incomplete byte-fallback character) until the next space, kanji or newline, and re-decodes the
whole line on every token. `JapaneseTextStreamer` is a drop-in replacement that releases each
character on the `put()` that completes it: a thin wrapper over
:class:`~jslm_chat.model.detokenizer.IncrementalDetokenizer`, which does the decoding in linear time.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase, TextIteratorStreamer

from jslm_chat.model.detokenizer import IncrementalDetokenizer


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

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        skip_prompt: bool = True,
        timeout: float | None = None,
        **decode_kwargs: Any,
    ) -> None:
        super().__init__(tokenizer, skip_prompt, timeout, **decode_kwargs)
        self.generated_token_count = 0
        self._detokenizer = IncrementalDetokenizer(tokenizer, **decode_kwargs)
        self._resuming = False

    def resume(self) -> None:
        """The next ``put()`` is the prompt of a retry that ends with what was already streamed:
        skip it and go on where the stream left off (a character half-decoded stays so)."""
        self.next_tokens_are_prompt = True
        self._resuming = True

    def put(self, value: Any) -> None:
        """Receive token ids (shape `(n,)` or `(1, n)`) and queue the characters they complete."""
        if len(value.shape) > 1 and value.shape[0] > 1:
            raise ValueError("JapaneseTextStreamer only supports batch size 1")
        ids: list[int] = (value[0] if len(value.shape) > 1 else value).tolist()

        if self.next_tokens_are_prompt and self._resuming:
            self.next_tokens_are_prompt = self._resuming = False
            return
        if self.next_tokens_are_prompt:  # a new stream starts with its prompt
            self.next_tokens_are_prompt = False
            self._detokenizer.reset()
            self.generated_token_count = 0
            if self.skip_prompt:
                return
        else:
            self.generated_token_count += len(ids)
        self.on_finalized_text(self._detokenizer.feed(ids))

    def end(self) -> None:
        """End the stream: an incomplete trailing sequence is dropped, and iteration stops."""
        self._detokenizer.reset()
        self.next_tokens_are_prompt = True
        self.on_finalized_text("", stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Queue `text` unless empty; at the end of the stream, queue the stop signal."""
        if text:
            self.text_queue.put(text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)
