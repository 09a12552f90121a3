"""Conversation → prompt token ids and display string, with a turn-aware context budget.

Two formats:

* ``llama2`` (the beta models), as Meta's reference and Stability's evaluation harness build it::

      <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user_1} [/INST] {reply_1} </s><s>[INST] {user_2} [/INST]␣

  (␣: the open turn ends with a space.) Each turn is encoded on its own; BOS and EOS are ids
  we insert, never text the tokenizer parses.
* ``alpaca_ja`` (the gamma model): the Japanese Alpaca preamble, then ``### 指示:`` (and
  ``### 入力:``) / ``### 応答:`` sections per turn, no BOS, encoded in one piece.

A *continuation* (the start of a reply that was cut off) ends the prompt instead of the empty
open reply: ``[INST] {user} [/INST] {continuation}`` (no EOS, no new ``[INST]``) or an 応答
section ending with it. It is encoded in the same piece as the open turn, so its ids are those
the tokenizer gives for the whole text, not necessarily the ids the model generated.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from jslm_chat.model.errors import UserError
from jslm_chat.model.presets import ALPACA_JA_FORMAT, LLAMA2_FORMAT

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


_TOO_LONG = {
    "message": (
        "メッセージが長すぎます",
        "メッセージを短くしてください",
        "The message is too long",
        "shorten the message",
    ),
    "continuation": (
        "続きを生成するには応答が長すぎます",
        "新しいメッセージで続けてください",
        "The reply is too long to continue",
        "go on with a new message",
    ),
    "system": (
        "システムプロンプトが長すぎます",
        "システムプロンプトを短くしてください",
        "The system prompt is too long",
        "shorten the system prompt",
    ),
}


class PromptTooLongError(UserError, ValueError):
    """The newest message alone does not fit the context window, even with every old turn left out.

    ``part`` names what is too long: ``system`` (the system prompt alone exceeds the budget),
    ``continuation`` (the partial reply being continued) or ``message``. ``num_tokens`` counts the
    shortest prompt: the system prompt and the newest message (and continuation) alone.
    """

    def __init__(self, num_tokens: int, budget: int, part: str = "message") -> None:
        self.num_tokens = num_tokens
        self.budget = budget
        self.part = part
        what_ja, fix_ja, what_en, fix_en = _TOO_LONG[part]
        super().__init__(
            f"{what_ja}: {num_tokens} トークンですが、入力に使えるのは {budget} トークンまでです"
            f"（最大生成トークン数を減らすか、{fix_ja}）。"
            f" / {what_en}: {num_tokens} tokens, but only {budget} fit in the context window"
            f" (lower max_new_tokens or {fix_en})."
        )


_FIELD_NAMES = {
    "system": ("システムプロンプト", "system prompt"),
    "history": ("会話履歴", "conversation history"),
    "message": ("メッセージ", "message"),
    "continuation": ("続きを生成する応答", "reply to continue"),
}
_SURROGATE = re.compile("[\ud800-\udfff]")


class PromptInputError(UserError, ValueError):
    """Text that cannot be encoded: an unpaired surrogate. ``field`` names where it is."""

    def __init__(self, field: str) -> None:
        self.field = field
        name_ja, name_en = _FIELD_NAMES[field]
        super().__init__(
            f"{name_ja}に使えない文字（対になっていないサロゲート）が含まれています。"
            f" / The {name_en} contains characters that cannot be encoded (unpaired surrogates)."
        )


def check_encodable(system: str, turns: Sequence[Turn], message: str, continuation: str = "") -> None:
    """Raise :class:`PromptInputError` naming the first field with an unpaired surrogate.

    Nothing is replaced: text the user sent is encoded exactly as sent, or refused.
    """
    fields = {
        "system": [system],
        "history": [text for turn in turns for text in (turn.user, turn.assistant)],
        "message": [message],
        "continuation": [continuation],
    }
    for field, texts in fields.items():
        if any(_SURROGATE.search(text) for text in texts):
            raise PromptInputError(field)


class TokenizerLike(Protocol):
    """What prompt building needs from a tokenizer."""

    bos_token_id: int | None
    eos_token_id: int | None

    def __call__(self, text: str, **kwargs: object) -> dict[str, list[int]]: ...


class PromptFormat(Protocol):
    """Turns a conversation into prompt segments."""

    def segments(self, system: str, turns: Sequence[Turn], message: str, continuation: str = "") -> list[Segment]:
        """Segments for the system prompt, finished turns, the open message and any partial reply."""
        ...


class Llama2Format:
    """Llama-2 chat format: one segment per turn, BOS before each, EOS after each finished reply."""

    def segments(self, system: str, turns: Sequence[Turn], message: str, continuation: str = "") -> list[Segment]:
        """Render system prompt, finished turns and the open message (ending with ``continuation``)."""
        users = [turn.user.strip() for turn in turns] + [message.strip()]
        if system.strip():
            users[0] = f"{B_SYS}{system.strip()}{E_SYS}{users[0]}"
        segments = [
            Segment(f"{B_INST} {user} {E_INST} {turn.assistant.strip()} ", bos=True, eos=True)
            for user, turn in zip(users[:-1], turns, strict=True)
        ]
        segments.append(Segment(f"{B_INST} {users[-1]} {E_INST} {continuation.lstrip()}", bos=True))
        return segments


class AlpacaJaFormat:
    """Japanese Alpaca format of instruct-gamma-7b: preamble, then 指示/入力/応答 sections, no BOS.

    As in the model card's ``build_prompt(user_query, inputs)``. A message whose first paragraph
    is followed by a blank line and more text is an instruction with an input (the card's own
    example, ``…教えてください。\n\n情けは人のためならず``): the rest goes into ``### 入力:``.
    Earlier turns become earlier 指示/応答 pairs.
    """

    def segments(self, system: str, turns: Sequence[Turn], message: str, continuation: str = "") -> list[Segment]:
        """Render the whole conversation as one text segment ending in an open 応答 section."""
        sections = []
        for turn in turns:
            sections += [*_alpaca_request(turn.user), _alpaca_section("応答", turn.assistant)]
        sections += [*_alpaca_request(message), f"応答: \n{continuation.lstrip()}"]
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

    def render(self, system: str, turns: Sequence[Turn], message: str, continuation: str = "") -> RenderedPrompt:
        """The full prompt for the conversation, with no turn dropped."""
        check_encodable(system, turns, message, continuation)
        return self._render(system, turns, message, continuation, self.encode_text, dropped=0)

    def build(
        self, system: str, turns: Sequence[Turn], message: str, *, budget: int, continuation: str = ""
    ) -> RenderedPrompt:
        """The prompt with the fewest oldest turns dropped so that it fits in ``budget`` tokens.

        The system prompt, the newest message and ``continuation`` are always kept. Raises
        :class:`PromptTooLongError` when even they alone do not fit, :class:`PromptInputError` for
        text that cannot be encoded.

        Searches the number of kept turns (1, 3, 7, … then bisecting), so the work grows with the
        turns that fit, not with the whole history: each Llama-2 turn is encoded once, plus the
        first kept turn of each try together with the system prompt. This finds
        what trying every number of dropped turns in order would find as long as keeping one more
        turn never makes the prompt shorter, which holds for every turn that adds its own text.
        """
        check_encodable(system, turns, message, continuation)
        cache: dict[str, list[int]] = {}

        def encode(text: str) -> list[int]:
            if text not in cache:
                cache[text] = self.encode_text(text)
            return cache[text]

        def keeping(kept: int) -> RenderedPrompt:
            dropped = len(turns) - kept
            return self._render(system, turns[dropped:], message, continuation, encode, dropped=dropped)

        shortest = keeping(0)
        if shortest.num_tokens > budget:
            raise PromptTooLongError(shortest.num_tokens, budget, self._too_long_part(system, budget, continuation))
        return _keep_most(len(turns), keeping, budget, shortest)

    def _too_long_part(self, system: str, budget: int, continuation: str) -> str:
        """What to blame when the shortest prompt does not fit."""
        if system.strip() and len(self.encode_text(system.strip())) > budget:
            return "system"
        return "continuation" if continuation.strip() else "message"

    def _render(
        self,
        system: str,
        turns: Sequence[Turn],
        message: str,
        continuation: str,
        encode: Callable[[str], list[int]],
        dropped: int,
    ) -> RenderedPrompt:
        bos_id, eos_id = self._tokenizer.bos_token_id, self._tokenizer.eos_token_id
        ids: list[int] = []
        text_parts: list[str] = []
        for segment in self._format.segments(system, turns, message, continuation):
            if segment.bos and bos_id is not None:
                ids.append(bos_id)
                text_parts.append(self._bos_text)
            ids.extend(encode(segment.text))
            text_parts.append(segment.text)
            if segment.eos and eos_id is not None:
                ids.append(eos_id)
                text_parts.append(self._eos_text)
        return RenderedPrompt(ids, "".join(text_parts), dropped_turns=dropped, kept_turns=len(turns))


def _keep_most(
    total: int, keeping: Callable[[int], RenderedPrompt], budget: int, fitting: RenderedPrompt
) -> RenderedPrompt:
    """The prompt keeping the most of ``total`` turns within ``budget``; ``fitting`` keeps none.

    Gallops (keep 1, 3, 7, …) until a prompt does not fit, then bisects between the most kept
    that fit and the fewest that did not.
    """
    fit, unfit = 0, total + 1
    while unfit - fit > 1:
        kept = min(2 * fit + 1, total) if unfit > total else (fit + unfit) // 2
        prompt = keeping(kept)
        if prompt.num_tokens <= budget:
            fit, fitting = kept, prompt
        else:
            unfit = kept
    return fitting
