"""Stop strings: the reply ends before the first one, on the real in-process backend and in the shared
reply logic, and no part of a stop string is ever streamed (also when split across pieces)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from helpers import answer, greedy

from jslm_chat.model.backend import Conversation, ReplyStream
from jslm_chat.model.params import GenerationParams, InvalidParameterError
from jslm_chat.model.prompt import RenderedPrompt
from jslm_chat.model.stop_strings import find_stop, shown_length

QUESTION = Conversation("あなたは役立つアシスタントです。", [], "京都について教えてください。")


class PiecesReply(ReplyStream):
    """A reply whose text arrives in the given pieces (the shared logic, without a model)."""

    def __init__(self, pieces: list[str], stop: tuple[str, ...]) -> None:
        params = dataclasses.replace(greedy(len(pieces)), stop=stop)
        super().__init__(RenderedPrompt([1], "", 0, 0), params)
        self.pieces = pieces
        self.generated = 0

    def _generate(self) -> Iterator[str]:
        for piece in self.pieces:
            if self.stopped:
                return
            self.generated += 1
            self._count_tokens()
            yield piece


def streamed(reply: ReplyStream) -> list[str]:
    return list(reply)


def test_a_stop_string_split_across_pieces_is_never_shown_in_part():
    reply = PiecesReply(["東京は", "日本の", "首", "都で", "す。"], stop=("首都で",))
    texts = streamed(reply)
    assert reply.text == "東京は日本の"
    assert reply.finish_reason == "stop_string"
    assert all(reply.text.startswith(text) for text in texts)
    assert texts[-1] == "東京は日本の"
    assert reply.generated == 4  # it stopped on the piece that completed the stop string


def test_a_held_back_tail_that_is_no_stop_after_all_is_released():
    reply = PiecesReply(["これは", "首", "相の話。"], stop=("首都",))
    texts = streamed(reply)
    assert texts == ["これは", "これは首相の話。"]
    assert reply.text == "これは首相の話。"
    assert reply.finish_reason == "length"


def test_the_earliest_of_several_stop_strings_wins_and_a_stop_at_the_start_gives_empty_text():
    reply = PiecesReply(["あい", "うえお"], stop=("えお", "いう"))
    assert streamed(reply) == ["あ"]
    assert reply.text == "あ"
    first = PiecesReply(["###", "続き"], stop=("###",))
    assert streamed(first) == []
    assert first.text == "" and first.finish_reason == "stop_string"


def test_pure_helpers():
    assert find_stop("abcabc", ["ca", "bc"]) == 1
    assert find_stop("abc", ["x"]) == -1
    assert shown_length("今日は晴", ["晴れ", "は晴天"]) == 2
    assert shown_length("今日", ["晴れ"]) == 2


def test_the_demo_model_stops_before_a_stop_string_taken_from_its_own_reply(demo_engine):
    full = answer(demo_engine, QUESTION, greedy(40)).text
    stop = full[10:13]
    cut = full[: full.index(stop)]
    reply = demo_engine.stream(QUESTION, dataclasses.replace(greedy(40), stop=(stop, "存在しない文字列")))
    texts = streamed(reply)
    assert reply.text == cut
    assert reply.finish_reason == "stop_string"
    assert all(cut.startswith(text) for text in texts)
    assert 0 < reply.new_tokens < 40


@pytest.mark.parametrize(
    "value", [["a", "b", "c", "d", "e"], [""], "", [1], {"x": 1}, ["x" * 257]], ids=lambda value: repr(value)[:20]
)
def test_stop_values_that_cannot_be_honoured_are_refused(value):
    with pytest.raises(InvalidParameterError, match="stop"):
        with_stop(value)


def with_stop(value: object) -> GenerationParams:
    return GenerationParams.from_values({**dataclasses.asdict(greedy()), "stop": value}, 100)


def test_a_single_string_is_one_stop_and_none_is_no_stop():
    assert with_stop("。").stop == ("。",)
    assert with_stop(None).stop == ()
