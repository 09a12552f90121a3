"""OpenAI chat-completions requests → the chat service's inputs, and the service's replies → OpenAI's shapes.

Pure functions, no I/O: :func:`chat_inputs` turns a request body into ``(message, history,
settings)`` for :meth:`~jslm_chat.chat.service.ChatService.request` (fields left out get the model
preset's defaults, as ``/chat`` does); what this app cannot honour (``n`` > 1, tools, logprobs, a
JSON response format, penalties other than ``repetition_penalty``, images) is refused, never ignored.
Every refusal is an :class:`ApiError`: status, bilingual message, and the field it is about.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jslm_chat.model.backend import ReplyStream
from jslm_chat.model.errors import UserError
from jslm_chat.model.params import SETTINGS, Setting, echoed
from jslm_chat.model.presets import ModelPreset

SAMPLING_FIELDS: dict[str, str] = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",  # vLLM's extra field (the openai SDK sends it with extra_body)
    "repetition_penalty": "repetition_penalty",  # likewise
    "seed": "seed",
    "stop": "stop",
    "max_tokens": "max_new_tokens",
    "max_completion_tokens": "max_new_tokens",  # the newer name wins when both are given
}
"""OpenAI request field → the app's setting."""

OPENAI_FINISH_REASONS = {"eos": "stop", "stop_string": "stop", "length": "length", "stopped": "stop"}
"""The app's finish reason → OpenAI's."""

SYSTEM_ROLES = ("system", "developer")  # "developer": the newer OpenAI name for a system message
_SPECS: dict[str, Setting] = {spec.name: spec for spec in SETTINGS}
NO_TOOLS = ("ツール呼び出しには対応していません", "tool and function calling are not supported")
NO_MEDIA = ("画像・音声・ファイルには対応していません", "images, audio and files are not supported")
TEXT_CONTENT = ("content はテキストにしてください", "content must be a string or a list of text parts")


class ApiError(UserError):
    """A refusal in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind

    def body(self) -> dict[str, Any]:
        """The JSON body of the error response (or of an error event in a stream)."""
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


def unsupported(field: str, ja: str, en: str) -> ApiError:
    """A 400 for a parameter this app cannot honour."""
    return ApiError(f"{ja} / {en}", param=field, code="unsupported_parameter")


def invalid(field: str, ja: str, en: str) -> ApiError:
    """A 400 for a bad value of ``field``."""
    return ApiError(f"{ja} / {en}", param=field, code="invalid_value")


def served_model_name(preset: ModelPreset) -> str:
    """The model's name on the API: its hub id, or a local directory's own name."""
    model_id = preset.model_id
    is_hub_id = model_id.count("/") == 1 and not model_id.startswith((".", "/", "~"))
    return model_id if is_hub_id else Path(model_id).name or model_id


def check_model(body: Mapping[str, Any], preset: ModelPreset) -> str:
    """The served name; a 404 for a ``model`` this app does not serve (leaving it out is fine)."""
    name = served_model_name(preset)
    wanted = body.get("model")
    if wanted is not None and wanted not in (name, preset.key, preset.model_id):
        raise ApiError(
            f"モデル {echoed(wanted)} はありません。このサーバーのモデルは {name!r} です。"
            f" / The model {echoed(wanted)} does not exist here: this server serves {name!r}.",
            status=404,
            param="model",
            code="model_not_found",
        )
    return name


def refuse_unsupported(body: Mapping[str, Any]) -> None:
    """Raise :class:`ApiError` for the first parameter that cannot be honoured."""
    if body.get("n") not in (None, 1):
        raise unsupported("n", "n は 1 のみ対応しています", "only n=1 is supported (one reply per request)")
    for field in ("tools", "functions"):
        if body.get(field):
            raise unsupported(field, *NO_TOOLS)
    for field in ("tool_choice", "function_call"):
        if body.get(field) not in (None, "none"):
            raise unsupported(field, *NO_TOOLS)
    if body.get("logprobs") or body.get("top_logprobs") is not None:
        raise unsupported("logprobs", "logprobs には対応していません", "logprobs are not supported")
    response_format = body.get("response_format")
    if response_format is not None and not (
        isinstance(response_format, Mapping) and response_format.get("type") == "text"
    ):
        raise unsupported(
            "response_format", "応答形式はテキストのみです", "only the text response format is supported (no JSON mode)"
        )
    for field in ("frequency_penalty", "presence_penalty"):
        if body.get(field) not in (None, 0, 0.0):
            raise unsupported(
                field, f"{field} には対応していません（repetition_penalty を使ってください）",
                f"{field} is not supported: use repetition_penalty",
            )  # fmt: skip
    if body.get("logit_bias"):
        raise unsupported("logit_bias", "logit_bias には対応していません", "logit_bias is not supported")
    if body.get("modalities") not in (None, ["text"]) or body.get("audio") is not None:
        raise unsupported("modalities", "テキストのみ対応しています", "only text output is supported")


def _part_text(part: object, field: str) -> str:
    if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
        return str(part["text"])
    if isinstance(part, Mapping) and part.get("type") in ("image_url", "input_image", "input_audio", "file"):
        raise unsupported(field, *NO_MEDIA)
    raise invalid(field, *TEXT_CONTENT)


def message_text(message: Mapping[str, Any], field: str) -> str:
    """The text of a message's ``content``: a string or a list of text parts (``None``: empty)."""
    content = message.get("content")
    if message.get("tool_calls") or message.get("function_call"):
        raise unsupported(field, *NO_TOOLS)
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "".join(_part_text(part, f"{field}.content[{index}]") for index, part in enumerate(content))
    raise invalid(f"{field}.content", *TEXT_CONTENT)


def split_messages(messages: object) -> tuple[str | None, list[dict[str, str]], str]:
    """``(system or None, history, newest user message)`` from OpenAI ``messages``.

    An optional leading system (or developer) message, then user and assistant taking turns, ending with user.
    """
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "messages は空でないリストにしてください", "messages must be a non-empty list")
    system = None
    items = list(enumerate(messages))
    first = messages[0]
    if isinstance(first, Mapping) and first.get("role") in SYSTEM_ROLES:
        system = message_text(first, "messages[0]")
        items = items[1:]
    history: list[dict[str, str]] = []
    for turn, (index, message) in enumerate(items):
        expected = "user" if turn % 2 == 0 else "assistant"
        role = message.get("role") if isinstance(message, Mapping) else None
        if role != expected:
            raise invalid(
                f"messages[{index}]",
                f"messages[{index}] の role は {expected} にしてください"
                "（system は先頭のみ、以降 user と assistant が交互）",
                f"messages[{index}] must have role {expected!r}, got {echoed(role)}"
                " (an optional system message first, then user and assistant taking turns)",
            )
        history.append({"role": role, "content": message_text(message, f"messages[{index}]")})
    if not history or history[-1]["role"] != "user":
        raise invalid("messages", "最後のメッセージは user にしてください", "the last message must be the user's")
    return system, history[:-1], history[-1]["content"]


def sampling_settings(body: Mapping[str, Any], max_new_tokens_limit: int) -> dict[str, Any]:
    """The sampling fields present in ``body`` (``null`` = absent), checked under their OpenAI names."""
    settings: dict[str, Any] = {}
    for field, name in SAMPLING_FIELDS.items():
        if body.get(field) is not None:
            spec = dataclasses.replace(_SPECS[name], name=field)
            try:
                settings[name] = spec.check(body[field], high=max_new_tokens_limit)
            except UserError as error:
                raise ApiError(str(error), param=field, code="invalid_value") from error
    return settings


def chat_inputs(
    body: Mapping[str, Any], defaults: Mapping[str, Any], max_new_tokens_limit: int
) -> tuple[str, list[dict[str, str]], dict[str, Any]]:
    """``(message, history, settings)`` for the chat service; ``defaults``: the preset's settings."""
    refuse_unsupported(body)
    system, history, message = split_messages(body.get("messages"))
    settings = {**defaults, **sampling_settings(body, max_new_tokens_limit)}
    if system is not None:
        settings["system_prompt"] = system
    return message, history, settings


def stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    """``(stream, include_usage)`` from ``stream`` and ``stream_options``."""
    stream, options = body.get("stream") or False, body.get("stream_options") or {}
    if not isinstance(stream, bool):
        raise invalid("stream", "stream は true か false にしてください", "stream must be true or false")
    if not isinstance(options, Mapping):
        raise invalid("stream_options", "stream_options はオブジェクトにしてください", "stream_options: an object")
    return stream, bool(options.get("include_usage"))


def usage(reply: ReplyStream) -> dict[str, int]:
    """Real token counts: the exact prompt (as ``/prompt`` counts it) and the generated tokens."""
    prompt, completion = reply.prompt.num_tokens, reply.new_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion(ids: tuple[str, int, str], text: str, finish_reason: str, reply: ReplyStream) -> dict[str, Any]:
    """A whole ``chat.completion``; ``ids``: (id, created, model)."""
    completion_id, created, model = ids
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": OPENAI_FINISH_REASONS.get(finish_reason, "stop"),
        "logprobs": None,
    }
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage(reply),
    }


def chunk(ids: tuple[str, int, str], choices: Sequence[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """One ``chat.completion.chunk`` (``extra``: ``usage`` when asked for)."""
    completion_id, created, model = ids
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": list(choices),
        **extra,
    }


def delta(content: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
    """A chunk's one choice: ``content`` (role or text) and, last, the finish reason."""
    reason = OPENAI_FINISH_REASONS.get(finish_reason, "stop") if finish_reason else None
    return {"index": 0, "delta": content, "finish_reason": reason, "logprobs": None}
