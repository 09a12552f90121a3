"""Plain helpers the tests import (fixtures live in ``conftest.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jslm_chat.chat.service import ChatService
    from jslm_chat.model.backend import Backend, Conversation, ReplyStream
    from jslm_chat.model.params import GenerationParams

SAMPLE_JA = (
    "こんにちは。今日はいい天気ですね。散歩に行きましょう！\n"
    "「情けは人のためならず」は、人に親切にすると巡り巡って自分に良いことが返ってくる、という意味です。\n"
    "東京は日本の首都です。京都には古いお寺がたくさんあります。\n"
    "日本語の文章には、ひらがな・カタカナ・漢字が使われます。\n"
    "Hello, world! 123 + 456 = 579.\n"
)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_app(backend: Backend, **settings: Any) -> tuple[Any, str, ChatService]:
    """The app as ``app.py`` serves it, on a free local port, without blocking: (app, url, service)."""
    from jslm_chat.server import create_app, launch
    from jslm_chat.settings import Settings

    chosen = Settings(**{"demo": True, "host": "127.0.0.1", "port": free_port(), **settings})
    app, service = create_app(chosen, backend=backend)
    _, url, _ = launch(app, service, chosen, block=False)
    return app, url, service


def greedy(max_new_tokens: int = 24, *, ignore_eos: bool = True) -> GenerationParams:
    """Greedy decoding; replies run to their full length (EOS ignored) so that there is text to compare."""
    from jslm_chat.model.params import GenerationParams

    return GenerationParams(max_new_tokens, 0.0, 1.0, 0, 1.0, 0, ignore_eos=ignore_eos)


def answer(backend: Backend, conversation: Conversation, params: GenerationParams | None = None) -> ReplyStream:
    """The finished reply of ``backend`` to ``conversation``."""
    reply = backend.stream(conversation, params or greedy())
    for _ in reply:
        pass
    assert reply.finish_reason in ("eos", "length")
    return reply


def generation_threads() -> list[object]:
    """Generation threads still alive in this process."""
    import threading

    return [thread for thread in threading.enumerate() if thread.name == "jslm-generate" and thread.is_alive()]


def wait_until(condition: object, timeout: float, interval: float = 0.02) -> bool:
    """Poll ``condition()`` until it is true or ``timeout`` seconds pass; return its last value."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())
