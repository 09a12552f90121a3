"""The demo model's training text: the bundled Q/A corpus, rendered as Llama-2 chat turns.

Turns are rendered by the app's own prompt code (:class:`~jslm_chat.model.prompt.Llama2Format`, with
the default system prompt in the first turn) and encoded as the app encodes prompts, so the
model sees in training exactly what it is given at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from jslm_chat.demo_model.recipe import BOS_ID, CORPUS_PATH, EOS_ID, TRAIN_RECIPE
from jslm_chat.model.presets import DEFAULT_SYSTEM_PROMPT
from jslm_chat.model.prompt import Llama2Format, PromptBuilder, Segment, TokenizerLike, Turn

_FORMAT = Llama2Format()


def load_corpus(path: Path = CORPUS_PATH) -> list[tuple[str, str]]:
    """Parse the corpus into (question, answer) pairs.

    Format: blocks separated by blank lines, each one ``Q: ...`` line then one ``A: ...`` line;
    lines starting with ``#`` are comments.
    """
    pairs: list[tuple[str, str]] = []
    block: list[tuple[int, str]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate([*lines, ""], start=1):
        if line.startswith("#"):
            continue
        if line.strip():
            block.append((number, line))
            continue
        if not block:
            continue
        if len(block) != 2 or not block[0][1].startswith("Q: ") or not block[1][1].startswith("A: "):
            raise ValueError(f"{path}:{block[0][0]}: expected a 'Q: ' line then an 'A: ' line")
        question, answer = block[0][1][3:].strip(), block[1][1][3:].strip()
        if not question or not answer:
            raise ValueError(f"{path}:{block[0][0]}: empty question or answer")
        pairs.append((question, answer))
        block = []
    if not pairs:
        raise ValueError(f"{path}: no Q/A pairs")
    return pairs


def _finished_segments(system: str, turns: Sequence[Turn]) -> list[Segment]:
    """The format's segments of a conversation whose every turn has its reply."""
    # With no open message, the format's last segment is an empty open turn: leave it out.
    return _FORMAT.segments(system, turns, "")[:-1]


def tokenizer_texts(pairs: list[tuple[str, str]]) -> list[str]:
    """The text the tokenizer is trained on: every pair as a finished turn, with and without the system block."""
    return [
        segment.text
        for question, answer in pairs
        for system in (DEFAULT_SYSTEM_PROMPT, "")
        for segment in _finished_segments(system, [Turn(question, answer)])
    ]


def _conversation(builder: PromptBuilder, turns: Sequence[Turn]) -> tuple[list[int], list[bool]]:
    """Token ids of a finished conversation, and which of them belong to a reply (and its EOS)."""
    ids: list[int] = []
    reply: list[bool] = []
    for index, segment in enumerate(_finished_segments(DEFAULT_SYSTEM_PROMPT, turns)):
        prompt = builder.render(DEFAULT_SYSTEM_PROMPT, turns[:index], turns[index].user).token_ids
        ids += [BOS_ID] * segment.bos + builder.encode_text(segment.text) + [EOS_ID] * segment.eos
        if ids[: len(prompt)] != prompt:
            raise RuntimeError(f"prompt tokens are not a prefix of the finished turn: {turns[index].user!r}")
        reply += [False] * (len(prompt) - len(reply)) + [True] * (len(ids) - len(prompt))
    return ids, reply


def training_samples(pairs: list[tuple[str, str]], tokenizer: TokenizerLike) -> list[tuple[list[int], list[bool]]]:
    """Token ids of every training conversation, and which of them belong to a reply.

    Every pair is a one-turn conversation, except that every third one is followed by the next
    pair as a second turn (which has no system block), so the model also answers after earlier
    turns. Each turn's open prompt must encode to a prefix of the finished turn, as at run time.
    The loss is on the replies and their EOS only: the model learns to answer, not to ask.
    """
    builder = PromptBuilder(tokenizer, _FORMAT)
    every = TRAIN_RECIPE["second_turn_every"]
    samples = []
    for index, (question, answer) in enumerate(pairs):
        turns = [Turn(question, answer)]
        if index % every == 0 and index + 1 < len(pairs):
            turns.append(Turn(*pairs[index + 1]))
        samples.append(_conversation(builder, turns))
    return samples
