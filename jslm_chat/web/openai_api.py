"""The OpenAI-compatible API on the app's own port: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Routes beside Gradio's (``Blocks.launch(app_kwargs={"routes": ...})``), going through the same
:class:`~jslm_chat.chat.service.ChatService` as ``/chat``: the same checks, limits, waiting line,
backends and Japanese-aware text. A request takes its place in line before any answer goes out,
so a full line is a 429, never a 200 that says "busy". A client that closes the stream or the
connection stops the reply (or leaves the line) at once. Gradio's ``auth`` does not cover these
routes: they check ``Authorization: Bearer KEY`` themselves, and are closed (401) when the UI has a
login but no API key was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from jslm_chat.chat.admission import BusyError
from jslm_chat.chat.service import ChatService, Done, InLine, ReplyJob, log_user_error, stream_events
from jslm_chat.model.backend import GenerationError
from jslm_chat.model.errors import UserError
from jslm_chat.model.prompt import PromptTooLongError
from jslm_chat.web import openai_schema as schema
from jslm_chat.web.client_address import client_of
from jslm_chat.web.openai_schema import ApiError

DISCONNECT_POLL_SECONDS = 0.25  # a non-streaming request notices a closed connection this soon
RETRY_AFTER_SECONDS = 5
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class KeyCheck:
    """``Authorization: Bearer KEY`` against the configured keys (compared in constant time)."""

    def __init__(self, keys: Sequence[str], locked: bool) -> None:
        self._keys = tuple(key.encode() for key in keys)
        self._locked = locked

    def check(self, request: Request) -> None:
        """Raise a 401 :class:`ApiError` unless the request may use the API."""
        if not self._keys:
            if self._locked:
                raise ApiError(
                    "API キーが設定されていないため、この API は閉じています（--auth だけでは API を守れません）。"
                    "--api-key を指定してください。"
                    " / The API is closed: the UI has a login (--auth) but no API key was set; start with --api-key.",
                    status=401,
                    code="api_key_required",
                )
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode()
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(given, key) for key in self._keys):
            raise ApiError(
                "API キーがないか、正しくありません（Authorization: Bearer KEY）。"
                " / Missing or invalid API key (Authorization: Bearer KEY).",
                status=401,
                code="invalid_api_key",
            )


def api_error(error: UserError) -> ApiError:
    """The OpenAI-shaped refusal for an error of the chat service."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, BusyError):
        return ApiError(str(error), status=429, code="server_busy", kind="rate_limit_error")
    if isinstance(error, PromptTooLongError):
        return ApiError(str(error), param="messages", code="context_length_exceeded")
    if isinstance(error, GenerationError):
        return ApiError(str(error), status=500, code="generation_failed", kind="server_error")
    return ApiError(str(error), param="messages", code="invalid_value")  # the conversation itself


def error_response(error: UserError) -> JSONResponse:
    """The JSON error response (logged as one line: nothing is broken)."""
    refusal = api_error(error)
    log_user_error(refusal)
    headers = {}
    if refusal.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    elif refusal.status == 429:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return JSONResponse(refusal.body(), status_code=refusal.status, headers=headers)


def sse(payload: dict[str, Any] | str) -> bytes:
    """One server-sent event."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


async def read_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; a 400 for anything else."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(
            "リクエスト本文は JSON オブジェクトにしてください。 / The request body must be a JSON object.",
            code="invalid_json",
        )
    return body


async def chunks(
    service: ChatService, job: ReplyJob, ids: tuple[str, int, str], include_usage: bool
) -> AsyncIterator[bytes]:
    """The reply as ``chat.completion.chunk`` events, then ``[DONE]``; closing the stream stops the job."""
    extra = {"usage": None} if include_usage else {}
    sent = 0
    try:
        yield sse(schema.chunk(ids, [schema.delta({"role": "assistant", "content": ""})], **extra))
        async for event in stream_events(service, job):
            if isinstance(event, InLine):
                yield f": waiting in line, {event.ahead} ahead\n\n".encode()  # a comment: keeps the stream alive
                continue
            if len(event.text) > sent:
                yield sse(schema.chunk(ids, [schema.delta({"content": event.text[sent:]})], **extra))
                sent = len(event.text)
            if isinstance(event, Done):
                yield sse(schema.chunk(ids, [schema.delta({}, event.finish_reason)], **extra))
                if include_usage:
                    yield sse(schema.chunk(ids, [], usage=schema.usage(event.reply)))
    except UserError as error:  # after the 200: the error goes in the stream, as OpenAI and vLLM send it
        refusal = api_error(error)
        log_user_error(refusal)
        yield sse(refusal.body())
    finally:
        job.stop()
    yield sse("[DONE]")


async def whole_reply(service: ChatService, job: ReplyJob, request: Request) -> Done | None:
    """The reply's last event, or None when the client went away first (the job is then stopped)."""

    async def last() -> Done:
        async for event in stream_events(service, job):
            if isinstance(event, Done):
                return event
        raise RuntimeError("a reply ended without its last event")

    task = asyncio.ensure_future(last())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS)
            if not task.done() and await request.is_disconnected():
                return None
        return task.result()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        job.stop()


def openai_router(service: ChatService, *, api_keys: Sequence[str] = (), locked: bool = False) -> APIRouter:
    """``/v1/models`` and ``/v1/chat/completions`` for ``service``; ``locked``: the UI has a login."""
    router = APIRouter(prefix="/v1")
    keys = KeyCheck(api_keys, locked)
    preset = service.backend.preset
    started = int(time.time())

    @router.get("/models")
    async def models(request: Request) -> Response:
        try:
            keys.check(request)
        except ApiError as error:
            return error_response(error)
        model = {
            "id": schema.served_model_name(preset),
            "object": "model",
            "created": started,
            "owned_by": "jslm-chat",
            "max_model_len": service.backend.context_length,
        }
        return JSONResponse({"object": "list", "data": [model]})

    @router.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        job = None
        try:
            keys.check(request)
            body = await read_body(request)
            ids = (f"chatcmpl-{secrets.token_hex(12)}", int(time.time()), schema.check_model(body, preset))
            stream, include_usage = schema.stream_flags(body)
            defaults = preset.default_settings()
            message, history, settings = schema.chat_inputs(body, defaults, service.max_new_tokens_limit)
            job = service.start(service.request(message, history, settings), client=client_of(request))
            job.join()  # a full line is a 429 now, before any 200
        except UserError as error:
            if job is not None:
                job.stop()
            return error_response(error)
        if stream:
            return StreamingResponse(
                chunks(service, job, ids, include_usage),
                media_type="text/event-stream",
                headers=STREAM_HEADERS,
                background=BackgroundTask(job.stop),  # also when the stream never started
            )
        try:
            done = await whole_reply(service, job, request)
        except UserError as error:
            return error_response(error)
        if done is None:
            return Response(status_code=499)  # nobody is listening any more
        return JSONResponse(schema.completion(ids, done.text, done.finish_reason, done.reply))

    return router
