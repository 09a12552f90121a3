"""The named API endpoints ``/chat`` (streaming) and ``/prompt`` (no generation).

Both take ``message``, ``history``, then every setting of :data:`~jslm_chat.model.params.SHOWN_SETTINGS`
(defaults from the model preset), then ``continue_reply``: their typed signatures are built from
that table, so a new setting appears here by itself. Errors come back as ``gr.Error`` with a
Japanese + English message (one log line, no traceback), and the server keeps serving. Cancelling
a ``/chat`` job, or dropping its connection, stops the reply at once, also while it waits in line
or before its first token.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import gradio as gr

from jslm_chat.chat.service import ChatRequest, ChatService, Streaming, log_user_error, stream_events
from jslm_chat.model.errors import UserError
from jslm_chat.model.params import SHOWN_SETTINGS
from jslm_chat.web.client_address import client_of

HistoryType = list[dict[str, Any]] | None


def _signature(service: ChatService, returns: Any) -> inspect.Signature:
    """``(request, message, history, *settings, continue_reply)`` with the preset's defaults.

    Gradio passes the ``gr.Request`` (the client's address) and leaves it out of the API's inputs.
    """
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    defaults = service.backend.preset.default_settings()
    parameters = [
        inspect.Parameter("request", keyword, annotation=gr.Request),
        inspect.Parameter("message", keyword, annotation=str),
        inspect.Parameter("history", keyword, default=None, annotation=HistoryType),
    ]
    for spec in SHOWN_SETTINGS:
        annotation = spec.kind | None if spec.optional else spec.kind
        parameters.append(inspect.Parameter(spec.name, keyword, default=defaults[spec.name], annotation=annotation))
    parameters.append(inspect.Parameter("continue_reply", keyword, default=False, annotation=bool))
    return inspect.Signature(parameters, return_annotation=returns)


def _typed(function: Callable[..., Any], signature: inspect.Signature) -> Callable[..., Any]:
    """``function`` (taking ``*args, **kwargs``) presented to Gradio with ``signature``."""
    function.__signature__ = signature  # type: ignore[attr-defined]  # read by inspect.signature
    function.__annotations__ = {
        **{name: parameter.annotation for name, parameter in signature.parameters.items()},
        "return": signature.return_annotation,
    }
    return function


def register_api(service: ChatService) -> None:
    """Add ``/chat`` and ``/prompt`` to the Blocks being built."""
    chat_signature = _signature(service, AsyncIterator[str])
    prompt_signature = _signature(service, dict[str, Any])

    def checked(signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ChatRequest:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        del values["request"]
        message, history, continue_reply = values.pop("message"), values.pop("history"), values.pop("continue_reply")
        try:
            return service.request(message, history, values, continue_reply=bool(continue_reply))
        except UserError as error:
            raise _user_error(error) from error

    async def chat(*args: Any, **kwargs: Any) -> AsyncIterator[str]:
        """Stream the growing reply to `message` after `history` ({role, content} dicts).

        With `continue_reply`, the last message of `history` is a reply cut off at max_new_tokens:
        leave `message` empty; the stream then carries that reply with its continuation.
        """
        client = client_of(args[0] if args else kwargs.get("request"))
        request = checked(chat_signature, args, kwargs)
        try:
            job = service.start(request, client=client)
            async for event in stream_events(service, job):
                if isinstance(event, Streaming):
                    yield event.text
        except UserError as error:
            raise _user_error(error) from error

    def prompt(*args: Any, **kwargs: Any) -> dict[str, Any]:
        """The exact prompt the model would see for these inputs: text, token ids, count, turns left out."""
        try:
            rendered = service.prompt(checked(prompt_signature, args, kwargs))
        except UserError as error:
            raise _user_error(error) from error
        return {
            "prompt": rendered.text,
            "token_ids": rendered.token_ids,
            "num_tokens": rendered.num_tokens,
            "dropped_turns": rendered.dropped_turns,
        }

    gr.api(_typed(chat, chat_signature), api_name="chat", concurrency_limit=None)
    gr.api(_typed(prompt, prompt_signature), api_name="prompt", concurrency_limit=None)


def _user_error(error: BaseException) -> gr.Error:
    """The bilingual message for the client, logged as one line."""
    log_user_error(error)
    return gr.Error(str(error), print_exception=False)
