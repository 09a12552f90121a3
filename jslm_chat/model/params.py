"""The user-facing settings, declared once, and their validation (clear Japanese + English errors).

Each sampling setting is a field of :class:`GenerationParams` whose metadata is its
:class:`Setting` (type, range, slider step, label keys). The system prompt is the one setting
that is not a sampling parameter. :data:`SETTINGS` lists all of them in display order; the
sliders, the reset button, the export metadata, validation and the ``/chat`` and ``/prompt``
signatures are all derived from it, so a new knob is one field here plus its use in the backends.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

from jslm_chat.model.errors import UserError

MAX_SYSTEM_PROMPT_CHARS = 16_000
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 256


class InvalidParameterError(UserError, ValueError):
    """A setting is of the wrong type or out of range."""


@dataclass(frozen=True)
class Setting:
    """One setting: its name, type, allowed range, control and label keys (``web.text``)."""

    name: str
    kind: type
    label: str
    info: str | None = None
    low: float | None = None
    high: float | None = None  # None for max_new_tokens: the server's limit decides
    low_open: bool = False
    step: float | None = None  # a slider's step; None: a text box
    slider_high: float | None = None  # the slider may stop below what the API accepts
    optional: bool = False  # None (an empty box) is allowed: seed, "random"
    shown: bool = True  # in the UI and the API; False: an internal option
    max_chars: int | None = None

    def check(self, value: object, high: float | None = None) -> Any:
        """``value`` converted to this setting's type; raises :class:`InvalidParameterError`."""
        if self.optional and (value is None or (isinstance(value, str) and not value.strip())):
            return None
        if self.kind is str:
            return checked_text(self.name, value, self.max_chars)
        if self.kind is bool:
            return bool(value)
        if self.kind is tuple:
            return _texts(self.name, value, int(self.high or 0), self.max_chars)
        bounds = (self.low, high if self.high is None else self.high)
        if self.kind is int:
            return _integer(self.name, value, bounds)
        return _number(self.name, value, bounds, low_open=self.low_open)


def setting(kind: type, label: str, **spec: Any) -> Any:
    """A dataclass field of :class:`GenerationParams` described by a :class:`Setting`."""
    default = spec.pop("default", dataclasses.MISSING)
    return field(default=default, metadata={"setting": (kind, label, spec)})


@dataclass(frozen=True)
class GenerationParams:
    """How to sample one reply. ``temperature == 0`` means greedy; ``top_k == 0`` disables top-k;
    ``seed is None`` means a fresh random seed; ``ignore_eos`` (API-internal, vLLM's name) keeps
    generating to ``max_new_tokens``; ``stop`` (API-only) ends the reply before the first of these strings."""

    max_new_tokens: int = setting(int, "jslm_max_new_tokens", low=1, step=1)
    temperature: float = setting(float, "jslm_temperature", info="jslm_temperature_info", low=0.0, high=2.0, step=0.05)
    top_p: float = setting(float, "jslm_top_p", info="jslm_top_p_info", low=0.0, high=1.0, low_open=True, step=0.01)
    top_k: int = setting(int, "jslm_top_k", info="jslm_top_k_info", low=0, high=1000, step=1, slider_high=200)
    repetition_penalty: float = setting(
        float, "jslm_repetition_penalty", info="jslm_repetition_penalty_info", low=1.0, high=2.0, step=0.01
    )
    seed: int | None = setting(
        int, "jslm_seed", info="jslm_seed_info", low=0, high=2**32 - 1, optional=True, default=None
    )
    ignore_eos: bool = setting(bool, "", shown=False, default=False)
    stop: tuple[str, ...] = setting(tuple, "", shown=False, default=(), high=MAX_STOP_STRINGS, max_chars=MAX_STOP_CHARS)

    @property
    def greedy(self) -> bool:
        """Whether the reply is decoded greedily (no sampling)."""
        return self.temperature == 0

    @classmethod
    def from_values(cls, values: Mapping[str, object], max_new_tokens_limit: int) -> GenerationParams:
        """Validated parameters from raw values (UI or API; a seed may be typed text)."""
        checked = {
            spec.name: spec.check(values[spec.name], high=max_new_tokens_limit)
            for spec in PARAM_SETTINGS
            if spec.name in values
        }
        return cls(**checked)

    def validated(self, max_new_tokens_limit: int) -> GenerationParams:
        """A copy with every value checked and normalised to its type."""
        return self.from_values(dataclasses.asdict(self), max_new_tokens_limit)


def _settings_of(params: type[GenerationParams]) -> tuple[Setting, ...]:
    specs = []
    for item in dataclasses.fields(params):
        kind, label, spec = item.metadata["setting"]
        specs.append(Setting(item.name, kind, label, **spec))
    return tuple(specs)


PARAM_SETTINGS: tuple[Setting, ...] = _settings_of(GenerationParams)
SYSTEM_PROMPT = Setting(
    "system_prompt", str, "jslm_system_prompt", info="jslm_system_prompt_info", max_chars=MAX_SYSTEM_PROMPT_CHARS
)
SETTINGS: tuple[Setting, ...] = (SYSTEM_PROMPT, *PARAM_SETTINGS)
"""Every setting in display order (the UI's controls, the API's parameters after message and history)."""
SHOWN_SETTINGS: tuple[Setting, ...] = tuple(spec for spec in SETTINGS if spec.shown)


def echoed(value: object) -> str:
    """``repr(value)`` cut to about 60 characters: what an error message quotes of what was sent."""
    echo = reprlib.Repr()
    echo.maxstring = echo.maxother = 60
    echo.maxlong, echo.maxlevel = 40, 2
    echo.maxlist = echo.maxtuple = echo.maxdict = 6
    return echo.repr(value)


def checked_text(
    name: str, value: object, max_chars: int | None, error: type[ValueError] = InvalidParameterError
) -> str:
    """``value`` as text (``None`` is empty) of at most ``max_chars`` characters; else ``error``, bilingual."""
    text = "" if value is None else value
    if not isinstance(text, str):
        raise error(
            f"{name} は文字列で指定してください（{type(value).__name__} が渡されました）。"
            f" / {name} must be a string, got {type(value).__name__}."
        )
    if max_chars is not None and len(text) > max_chars:
        raise error(
            f"{name} が長すぎます（{len(text):,} 文字。{max_chars:,} 文字まで）。"
            f" / {name} is too long: {len(text):,} characters, at most {max_chars:,}."
        )
    return text


def _texts(name: str, value: object, most: int, max_chars: int | None) -> tuple[str, ...]:
    """A string or a list of at most ``most`` non-empty strings, as a tuple (``None``: none)."""
    items = () if value is None else (value,) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or len(items) > most:
        raise InvalidParameterError(
            f"{name} は文字列か {most} 個までの文字列のリストで指定してください（{echoed(value)}）。"
            f" / {name} must be a string or a list of at most {most} strings, got {echoed(value)}."
        )
    texts = tuple(checked_text(name, item, max_chars) for item in items)
    if not all(texts):
        raise InvalidParameterError(f"{name} に空の文字列は使えません。 / {name} cannot contain an empty string.")
    return texts


def _integer(name: str, value: object, bounds: tuple[float | None, float | None]) -> int:
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        value = int(value.strip())  # a seed typed into a text box
    not_whole = isinstance(value, float) and not (math.isfinite(value) and value.is_integer())
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not_whole:
        raise InvalidParameterError(
            f"{name} は整数で指定してください（{echoed(value)} が渡されました）。"
            f" / {name} must be an integer, got {echoed(value)}."
        )
    number = int(value)
    low, high = (_shown(bound) for bound in bounds)
    if (bounds[0] is not None and number < bounds[0]) or (bounds[1] is not None and number > bounds[1]):
        raise InvalidParameterError(
            f"{name} は {low} 以上 {high} 以下にしてください（{echoed(number)}）。"
            f" / {name} must be between {low} and {high}, got {echoed(number)}."
        )
    return number


def _number(name: str, value: object, bounds: tuple[float | None, float | None], *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise InvalidParameterError(
            f"{name} は有限の数値で指定してください（{echoed(value)} が渡されました）。"
            f" / {name} must be a finite number, got {echoed(value)}."
        )
    number = float(value)
    low, high = bounds
    too_low = low is not None and (number <= low if low_open else number < low)
    if too_low or (high is not None and number > high):
        lower = f"{_shown(low)} より大きく" if low_open else f"{_shown(low)} 以上"
        lower_en = f"greater than {_shown(low)}" if low_open else f"at least {_shown(low)}"
        raise InvalidParameterError(
            f"{name} は {lower} {_shown(high)} 以下にしてください（{echoed(number)}）。"
            f" / {name} must be {lower_en} and at most {_shown(high)}, got {echoed(number)}."
        )
    return number


def _shown(bound: float | None) -> str:
    """A bound as people write it: ``1``, ``0.5``, ``4294967295``; ``∞`` for none."""
    if bound is None:
        return "∞"
    return str(int(bound)) if float(bound).is_integer() else str(bound)
