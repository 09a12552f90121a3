"""A brake on guessing passwords: after a few failed logins from one address, that address waits.

Wraps Gradio's ``POST /login``: each failure is logged once (user name and address, never the
password); after :data:`FAILURES_ALLOWED` failures within :data:`WINDOW_SECONDS`, that address
gets ``429`` with ``Retry-After`` until the oldest failure leaves the window. Other addresses,
the right user's included, are not affected; a successful login clears its address's count.
"""

from __future__ import annotations

import json
import logging
import math
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jslm_chat.web.log_bounds import cut
from jslm_chat.web.rate import WindowCounter

logger = logging.getLogger(__name__)

FAILURES_ALLOWED = 5
WINDOW_SECONDS = 300.0
MAX_LOGIN_BODY_BYTES = 4_096
MAX_LOGGED_NAME_CHARS = 64


def brake_message(seconds: int) -> str:
    """The bilingual refusal for an address that failed too often."""
    return (
        f"ログインの失敗が続いたため、{seconds} 秒後にもう一度お試しください。"
        f" / Too many failed logins from your address: try again in {seconds} s."
    )


async def json_response(
    send: Send, status: int, message: str, headers: dict[str, str] | None = None, *, payload: object = None
) -> None:
    """Answer ``{"error": message}`` (or ``payload``) with ``status`` (the body already read or left unread)."""
    body = json.dumps(payload or {"error": message, "detail": message}, ensure_ascii=False).encode("utf-8")
    fields = {"content-type": "application/json; charset=utf-8", "content-length": str(len(body)), **(headers or {})}
    encoded = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in fields.items()]
    await send({"type": "http.response.start", "status": status, "headers": encoded})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or ``None`` once it passes ``limit`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then whatever the connection says next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class LoginBrake:
    """Per-address failed-login counts, applied around Gradio's login route."""

    def __init__(self, failures_allowed: int = FAILURES_ALLOWED, window_seconds: float = WINDOW_SECONDS) -> None:
        self.failures_allowed = failures_allowed
        self.failures = WindowCounter(window_seconds)

    async def __call__(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse a braked address, else pass the login on and count its outcome."""
        address = scope["client"][0]
        if self.failures.count(address) >= self.failures_allowed:
            seconds = max(1, math.ceil(self.failures.retry_after(address)))
            await json_response(send, 429, brake_message(seconds), {"retry-after": str(seconds)})
            return
        body = await read_body(receive, MAX_LOGIN_BODY_BYTES)
        if body is None:
            await json_response(send, 413, "ログインの送信が大きすぎます / The login request is too large.")
            return
        status = 0

        async def watching(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await app(scope, replaying(body, receive), watching)
        if status == 200:
            self.failures.clear(address)
        elif status == 400:  # Gradio: "Incorrect credentials."
            user = parse_qs(body.decode("utf-8", "replace")).get("username", [""])[0]
            count = self.failures.add(address)
            logger.warning(
                "login failed: user %r from %s (%d of %d allowed)",
                cut(user, MAX_LOGGED_NAME_CHARS),
                address,
                count,
                self.failures_allowed,
            )
