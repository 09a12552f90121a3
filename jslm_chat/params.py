"""Sampling parameters of one reply, and their validation (clear Japanese + English errors)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

TEMPERATURE_RANGE = (0.0, 2.0)
TOP_P_RANGE = (0.0, 1.0)
TOP_K_RANGE = (0, 1000)
REPETITION_PENALTY_RANGE = (1.0, 2.0)
SEED_RANGE = (0, 2**32 - 1)


class InvalidParameterError(ValueError):
    """A sampling parameter is of the wrong type or out of range."""


@dataclass(frozen=True)
class GenerationParams:
    """How to sample one reply. ``temperature == 0`` means greedy; ``top_k == 0`` disables top-k;
    ``seed is None`` means a fresh random seed."""

    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        """Whether the reply is decoded greedily (no sampling)."""
        return self.temperature == 0

    def validated(self, max_new_tokens_limit: int) -> GenerationParams:
        """A copy with values normalised to their types; raises :class:`InvalidParameterError`."""
        seed = None if self.seed is None else _integer("seed", self.seed, SEED_RANGE)
        return GenerationParams(
            max_new_tokens=_integer("max_new_tokens", self.max_new_tokens, (1, max_new_tokens_limit)),
            temperature=_number("temperature", self.temperature, TEMPERATURE_RANGE),
            top_p=_number("top_p", self.top_p, TOP_P_RANGE, low_open=True),
            top_k=_integer("top_k", self.top_k, TOP_K_RANGE),
            repetition_penalty=_number("repetition_penalty", self.repetition_penalty, REPETITION_PENALTY_RANGE),
            seed=seed,
        )


def _integer(name: str, value: object, bounds: tuple[int, int]) -> int:
    low, high = bounds
    is_whole_float = isinstance(value, float) and math.isfinite(value) and value.is_integer()
    if isinstance(value, bool) or not (isinstance(value, int) or is_whole_float):
        raise InvalidParameterError(
            f"{name} は整数で指定してください（{value!r} が渡されました）。 / {name} must be an integer, got {value!r}."
        )
    number = int(value)
    if not low <= number <= high:
        raise InvalidParameterError(
            f"{name} は {low} 以上 {high} 以下にしてください（{number}）。"
            f" / {name} must be between {low} and {high}, got {number}."
        )
    return number


def _number(name: str, value: object, bounds: tuple[float, float], *, low_open: bool = False) -> float:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise InvalidParameterError(
            f"{name} は有限の数値で指定してください（{value!r} が渡されました）。"
            f" / {name} must be a finite number, got {value!r}."
        )
    number = float(value)
    if (number <= low if low_open else number < low) or number > high:
        lower = f"{low} より大きく" if low_open else f"{low} 以上"
        lower_en = f"greater than {low}" if low_open else f"at least {low}"
        raise InvalidParameterError(
            f"{name} は {lower} {high} 以下にしてください（{number}）。"
            f" / {name} must be {lower_en} and at most {high}, got {number}."
        )
    return number
