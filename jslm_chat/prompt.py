"""Conversation → prompt token ids and display string, with a turn-aware context budget.

Two formats:

* ``llama2`` (the beta models), as Meta's reference and Stability's evaluation harness build it::

      <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user_1} [/INST] {reply_1} </s><s>[INST] {user_2} [/INST]␣

  (␣: the open turn ends with a space.) Each turn is encoded on its own; BOS and EOS are ids
  we insert, never text the tokenizer parses.
* ``alpaca_ja`` (the gamma model): the Japanese Alpaca preamble, then ``### 指示:`` (and
  ``### 入力:``) / ``### 応答:`` sections per turn, no BOS, encoded in one piece.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .presets import ALPACA_JA_FORMAT, LLAMA2_FORMAT

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
ALPACA_SEPARATOR = "\n\n### "


@dataclass(frozen=True)
class Turn:
    """One finished exchange: what the user said and what the assistant replied."""

    user: str
    assistant: str


@dataclass(frozen=True)
class Segment:
    """A piece of the prompt encoded in one tokenizer call, with optional BOS/EOS ids around it."""

    text: str
    bos: bool = False
    eos: bool = False


@dataclass(frozen=True)
class RenderedPrompt:
    """The exact prompt the model sees."""

    token_ids: list[int]
    text: str
    dropped_turns: int
    kept_turns: int

    @property
    def num_tokens(self) -> int:
        """Number of prompt tokens."""
        return len(self.token_ids)


class PromptTooLongError(ValueError):
    """The newest message alone does not fit the context window, even with every old turn left out."""

    def __init__(self, num_tokens: int, budget: int) -> None:
        self.num_tokens = num_tokens
        self.budget = budget
        super().__init__(
            f"メッセージが長すぎます: {num_tokens} トークンですが、入力に使えるのは {budget} トークンまでです"
            "（最大生成トークン数を減らすか、メッセージを短くしてください）。"
            f" / The message is too long: {num_tokens} tokens, but only {budget} fit in the context window"
            " (lower max_new_tokens or shorten the message)."
        )


class TokenizerLike(Protocol):
    """What prompt building needs from a tokenizer."""

    bos_token_id: int | None
    eos_token_id: int | None

    def __call__(self, text: str, **kwargs: object) -> dict[str, list[int]]: ...


class PromptFormat(Protocol):
    """Turns a conversation into prompt segments."""

    def segments(self, system: str, turns: Sequence[Turn], message: str) -> list[Segment]: ...


class Llama2Format:
    """Llama-2 chat format: one segment per turn, BOS before each, EOS after each finished reply."""

    def segments(self, system: str, turns: Sequence[Turn], message: str) -> list[Segment]:
        """Render system prompt, finished turns and the open message."""
        users = [turn.user.strip() for turn in turns] + [message.strip()]
        if system.strip():
            users[0] = f"{B_SYS}{system.strip()}{E_SYS}{users[0]}"
        segments = [
            Segment(f"{B_INST} {user} {E_INST} {turn.assistant.strip()} ", bos=True, eos=True)
            for user, turn in zip(users[:-1], turns, strict=True)
        ]
        segments.append(Segment(f"{B_INST} {users[-1]} {E_INST} ", bos=True))
        return segments


class AlpacaJaFormat:
    """Japanese Alpaca format of instruct-gamma-7b: preamble, then 指示/入力/応答 sections, no BOS.

    As in the model card's ``build_prompt(user_query, inputs)``. A message whose first paragraph
    is followed by a blank line and more text is an instruction with an input (the card's own
    example, ``…教えてください。\n\n情けは人のためならず``): the rest goes into ``### 入力:``.
    Earlier turns become earlier 指示/応答 pairs.
    """

    def segments(self, system: str, turns: Sequence[Turn], message: str) -> list[Segment]:
        """Render the whole conversation as one text segment ending in an open 応答 section."""
        sections = []
        for turn in turns:
            sections += [*_alpaca_request(turn.user), _alpaca_section("応答", turn.assistant)]
        sections += [*_alpaca_request(message), _alpaca_section("応答", "")]
        body = ALPACA_SEPARATOR.join(sections)
        text = f"{system.strip()}{ALPACA_SEPARATOR}{body}" if system.strip() else f"### {body}"
        return [Segment(text)]


def _alpaca_request(message: str) -> list[str]:
    """The 指示 section, plus an 入力 section for text after the first blank line."""
    instruction, _, given = message.strip().partition("\n\n")
    if instruction.strip() and given.strip():
        return [_alpaca_section("指示", instruction), _alpaca_section("入力", given)]
    return [_alpaca_section("指示", message)]


def _alpaca_section(role: str, text: str) -> str:
    return f"{role}: \n{text.strip()}"


FORMATS: dict[str, PromptFormat] = {LLAMA2_FORMAT: Llama2Format(), ALPACA_JA_FORMAT: AlpacaJaFormat()}


def get_format(name: str) -> PromptFormat:
    """The prompt format registered under ``name``."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown prompt format {name!r}; known: {sorted(FORMATS)}") from None


class PromptBuilder:
    """Encodes conversations for one tokenizer and format, dropping old turns to fit the budget."""

    def __init__(self, tokenizer: TokenizerLike, prompt_format: PromptFormat) -> None:
        self._tokenizer = tokenizer
        self._format = prompt_format
        self._bos_text = getattr(tokenizer, "bos_token", None) or ""
        self._eos_text = getattr(tokenizer, "eos_token", None) or ""

    def encode_text(self, text: str) -> list[int]:
        """Token ids of plain text: no special tokens added, none parsed out of the text."""
        encoded = self._tokenizer(text, add_special_tokens=False, split_special_tokens=True)
        return list(encoded["input_ids"])

    def render(self, system: str, turns: Sequence[Turn], message: str) -> RenderedPrompt:
        """The full prompt for the conversation, with no turn dropped."""
        return self._render(system, turns, message, self.encode_text, dropped=0)

    def build(self, system: str, turns: Sequence[Turn], message: str, *, budget: int) -> RenderedPrompt:
        """The prompt with the fewest oldest turns dropped so that it fits in ``budget`` tokens.

        Raises :class:`PromptTooLongError` when even the system prompt plus the newest message
        alone do not fit.
        """
        cache: dict[str, list[int]] = {}

        def encode(text: str) -> list[int]:
            if text not in cache:
                cache[text] = self.encode_text(text)
            return cache[text]

        for dropped in range(len(turns) + 1):
            prompt = self._render(system, turns[dropped:], message, encode, dropped=dropped)
            if prompt.num_tokens <= budget:
                return prompt
        raise PromptTooLongError(prompt.num_tokens, budget)

    def _render(
        self,
        system: str,
        turns: Sequence[Turn],
        message: str,
        encode: Callable[[str], list[int]],
        dropped: int,
    ) -> RenderedPrompt:
        bos_id, eos_id = self._tokenizer.bos_token_id, self._tokenizer.eos_token_id
        ids: list[int] = []
        text_parts: list[str] = []
        for segment in self._format.segments(system, turns, message):
            if segment.bos and bos_id is not None:
                ids.append(bos_id)
                text_parts.append(self._bos_text)
            ids.extend(encode(segment.text))
            text_parts.append(segment.text)
            if segment.eos and eos_id is not None:
                ids.append(eos_id)
                text_parts.append(self._eos_text)
        return RenderedPrompt(ids, "".join(text_parts), dropped_turns=dropped, kept_turns=len(turns))
