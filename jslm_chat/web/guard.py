"""The HTTP guard in front of every route Gradio (and the app) serves: what a stranger can send.

One ASGI middleware, installed on Gradio's FastAPI app before the server starts
(:func:`app_kwargs`). It

- names the client: the peer's address, or with ``behind_proxy`` the address the proxy forwards
  (``scope["client"]`` is rewritten, so every handler and route sees the same client);
- refuses uploads (``/gradio_api/upload``): the app has no file input, so nothing a stranger sends
  is stored or served back; and deep links (``/gradio_api/deep_link``, which writes a session's
  values to disk): the app offers none;
- refuses a body over :data:`MAX_BODY_BYTES` (413, bilingual), before any handler reads it (a body
  sent without a length is read here first, up to the limit);
- answers ``/pwa_icon`` with the favicon (Gradio's own route fails on an SVG icon);
- brakes password guessing (:class:`~jslm_chat.web.login_brake.LoginBrake`);
- under ``--auth``, leaves the API description out of the login page;
- refuses a UI event whose event data Gradio could not read (a 👍/👎, an edit or a suggestion card
  without its index and values) with 422, instead of letting Gradio fail with a 500.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from starlette.middleware import Middleware
from starlette.responses import FileResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jslm_chat.web.client_address import client_address
from jslm_chat.web.login_brake import LoginBrake, json_response, read_body, replaying
from jslm_chat.web.openai_schema import ApiError

MAX_BODY_BYTES = 8 * 1024 * 1024
"""The largest request body: the largest request the app accepts (a saved store of 2.5 MB of JSON,
about 3.4 MB once encrypted, plus an open conversation of 400,000 characters, at most 2.4 MB as JSON
escapes) fits with room to spare."""
UPLOAD_PATHS = ("/gradio_api/upload", "/upload")
DEEP_LINK_PATH = "/gradio_api/deep_link"  # Gradio serves it at this path only
OPENAI_PREFIX = "/v1/"
ICON_PATH = "/pwa_icon"
API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.DOTALL)
NO_API_INFO = b"window.gradio_api_info = null;</script>"

EVENT_PATHS = ("/gradio_api/run/predict", "/gradio_api/queue/join", "/run/predict", "/queue/join")
EVENT_DATA_KEYS = {
    "like": ("index", "value"),
    "edit": ("index", "value", "previous_value"),
    "example_select": ("index", "value"),
}
"""What Gradio reads from an event's data to build ``LikeData`` / ``EditData`` / ``SelectData`` for its handler."""

UPLOAD_REFUSED = "このサーバーはファイルを受け付けません。 / This server does not accept file uploads."
NO_DEEP_LINKS = "このアプリにはディープリンクがありません。 / This app offers no deep links."
BAD_EVENT_DATA = "イベントのデータが読み取れません。 / The event's data cannot be read."
TOO_LARGE = (
    f"リクエストが大きすぎます（{MAX_BODY_BYTES // 1024 // 1024} MB まで）。"
    f" / The request is too large: at most {MAX_BODY_BYTES // 1024 // 1024} MB."
)


class Guard:
    """The middleware (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        behind_proxy: bool = False,
        favicon: str | None = None,
        event_data: dict[int, tuple[str, ...]] | None = None,
    ) -> None:
        self.app = app
        self.event_data = event_data or {}  # fn index -> the event data keys its handler needs
        self.behind_proxy = behind_proxy
        self.favicon = favicon
        self.brake = LoginBrake()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        peer = scope.get("client") or ("unknown", 0)
        address = client_address(peer[0], scope.get("headers", []), behind_proxy=self.behind_proxy)
        scope = {**scope, "client": (address, peer[1])}
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"].rstrip("/") or "/", scope["method"]
        length = _declared_length(scope)
        if path in UPLOAD_PATHS:
            await json_response(send, 403, UPLOAD_REFUSED)
            return
        if path == DEEP_LINK_PATH:
            await json_response(send, 404, NO_DEEP_LINKS)
            return
        if method == "POST" and path in EVENT_PATHS and self.event_data:
            body = await read_body(receive, MAX_BODY_BYTES)
            length, receive = (MAX_BODY_BYTES + 1, receive) if body is None else (len(body), replaying(body, receive))
            if body is not None and not self._readable_event(body):
                await json_response(send, 422, BAD_EVENT_DATA)
                return
        elif length is None and method in ("POST", "PUT", "PATCH"):
            body = await read_body(receive, MAX_BODY_BYTES)
            length, receive = (MAX_BODY_BYTES + 1, receive) if body is None else (len(body), replaying(body, receive))
        if (length or 0) > MAX_BODY_BYTES:
            await _too_large(path, send)
        elif path == ICON_PATH or path.startswith(ICON_PATH + "/"):
            await self._icon(scope, receive, send)
        elif path == "/login" and method == "POST":
            await self.brake(self.app, scope, receive, send)
        elif method == "GET" and getattr(scope.get("app"), "auth", None):
            await self.app(scope, receive, _without_api_info_before_login(send))
        else:
            await self.app(scope, receive, send)

    def _readable_event(self, body: bytes) -> bool:
        """Whether a UI event's request carries the event data its handler needs (or needs none)."""
        try:
            request = json.loads(body)
        except ValueError:
            return True  # Gradio answers malformed JSON itself
        needed = self.event_data.get(request.get("fn_index")) if isinstance(request, dict) else None
        data = request.get("event_data") if needed else None
        return not needed or (isinstance(data, dict) and all(key in data for key in needed))

    async def _icon(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.favicon is None:
            await json_response(send, 404, "アイコンはありません / No icon.")
            return
        await FileResponse(self.favicon)(scope, receive, send)


async def _too_large(path: str, send: Send) -> None:
    """The 413, in OpenAI's error shape on the OpenAI API (its clients read ``error.message``)."""
    openai = path.startswith(OPENAI_PREFIX)
    shaped = ApiError(TOO_LARGE, status=413, code="request_too_large").body() if openai else None
    await json_response(send, 413, TOO_LARGE, payload=shaped)


def _declared_length(scope: Scope) -> int | None:
    """The body's declared length (over the limit if unreadable); ``None`` without one."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            return int(value) if value.strip().isdigit() else MAX_BODY_BYTES + 1
    return None


def _without_api_info_before_login(send: Send) -> Send:
    """A ``send`` that removes the API description from the login page (an HTML page that asks for auth)."""
    start: Message | None = None
    chunks: list[bytes] = []

    async def sending(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers", []))
            if headers.get(b"content-type", b"").startswith(b"text/html"):
                start = message
                return
        if start is None:
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(chunks)
        if b'"auth_required":true' in body:
            body = API_INFO.sub(NO_API_INFO, body, count=1)
        headers = [(name, value) for name, value in start.get("headers", []) if name != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return sending


def event_data_needs(blocks: Any) -> dict[int, tuple[str, ...]]:
    """The event data keys each of ``blocks``' handlers needs, by fn index (👍/👎, edits, suggestion cards)."""
    return {
        index: EVENT_DATA_KEYS[event]
        for index, function in blocks.fns.items()
        for _, event in function.targets
        if event in EVENT_DATA_KEYS
    }


def app_kwargs(*, behind_proxy: bool, favicon: str | Path | None, blocks: Any = None) -> dict[str, Any]:
    """``Blocks.launch(app_kwargs=...)`` that install the guard (``blocks``: the app, for its events)."""
    needs = event_data_needs(blocks) if blocks is not None else {}
    icon = str(favicon) if favicon else None
    return {"middleware": [Middleware(Guard, behind_proxy=behind_proxy, favicon=icon, event_data=needs)]}
