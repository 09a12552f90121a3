"""Sampling parameter validation: types, ranges, NaN, bilingual messages."""

from __future__ import annotations

import math

import pytest

from jslm_chat.model.params import GenerationParams, InvalidParameterError

GOOD = {"max_new_tokens": 128, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1}


def params(**changes: object) -> GenerationParams:
    return GenerationParams(**{**GOOD, **changes})  # type: ignore[arg-type]


def test_good_values_pass_and_are_normalised():
    checked = params(temperature=1, max_new_tokens=64.0, seed=7).validated(2048)
    assert checked == GenerationParams(64, 1.0, 0.9, 40, 1.1, 7)
    assert isinstance(checked.temperature, float)
    assert isinstance(checked.max_new_tokens, int)


def test_temperature_zero_is_greedy():
    assert params(temperature=0).validated(2048).greedy
    assert not params(temperature=0.1).validated(2048).greedy


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("temperature", math.nan),
        ("temperature", -0.1),
        ("temperature", 2.5),
        ("temperature", "hot"),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_p", math.inf),
        ("top_k", -1),
        ("top_k", 2.5),
        ("repetition_penalty", 0.5),
        ("max_new_tokens", 0),
        ("max_new_tokens", 4097),
        ("max_new_tokens", True),
        ("seed", -1),
        ("seed", "abc"),
    ],
)
def test_bad_values_are_rejected_with_both_languages(name, value):
    with pytest.raises(InvalidParameterError) as caught:
        params(**{name: value}).validated(4096)
    message = str(caught.value)
    assert name in message
    assert any("\u3040" <= char <= "\u30ff" for char in message)  # Japanese kana
    assert " must " in message


def test_limit_applies_to_max_new_tokens():
    assert params(max_new_tokens=300).validated(300).max_new_tokens == 300
    with pytest.raises(InvalidParameterError, match="between 1 and 299"):
        params(max_new_tokens=300).validated(299)


@pytest.mark.parametrize(
    ("name", "value"),
    [("temperature", "t" * 1_000_000), ("seed", [0] * 100_000), ("stop", ["s"] * 1_000), ("top_k", 1.5 + 10**300)],
)
def test_an_error_quotes_a_huge_value_in_a_few_dozen_characters(name, value):
    with pytest.raises(InvalidParameterError) as refused:
        params(**{name: value}).validated(4096)
    assert " / " in str(refused.value) and len(str(refused.value)) < 400
