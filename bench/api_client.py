"""The lightest clients of the app's ``/chat`` and ``/v1/chat/completions``: plain HTTP, as ``curl`` would.

``/chat``: ``POST /gradio_api/call/chat`` with every parameter, then read the event's SSE stream to
its ``complete`` event. ``/v1`` (``--openai``): one streaming POST, its content deltas joined.
The benchmarks run it in a process of its own, as real clients are, so that
their figures are the app's cost and not a client library's (``gradio_client`` polls every 50 ms)::

    python bench/api_client.py http://127.0.0.1:7860/ [--openai]

reads one JSON list of chats per line on stdin (each a dict of ``/chat`` parameters; the rest
take their defaults), sends them all at once, and prints ``{"seconds": ..., "texts": [...]}``.
:class:`ClientProcess` runs it so and talks to it.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def chat_parameters(url: str) -> list[dict[str, Any]]:
    """The ``/chat`` parameters in order, with their defaults (``GET /gradio_api/info``)."""
    with urllib.request.urlopen(url + "gradio_api/info") as response:
        return json.loads(response.read())["named_endpoints"]["/chat"]["parameters"]


def chat(url: str, parameters: list[dict[str, Any]], values: dict[str, Any]) -> str:
    """The whole reply to one ``/chat`` call with ``values``."""
    data = [values.get(p["parameter_name"], p["parameter_default"]) for p in parameters]
    request = urllib.request.Request(
        url + "gradio_api/call/chat", json.dumps({"data": data}).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request) as response:
        event_id = json.loads(response.read())["event_id"]
    event = b""
    with urllib.request.urlopen(url + "gradio_api/call/chat/" + event_id) as stream:
        for line in stream:
            if line.startswith(b"event:"):
                event = line[6:].strip()
            elif line.startswith(b"data:") and event == b"complete":
                return json.loads(line[5:])[0]
            elif line.startswith(b"data:") and event == b"error":
                raise RuntimeError(line[5:].decode())
    raise RuntimeError(f"the stream ended without a reply (last event: {event.decode()})")


def openai_chat(url: str, values: dict[str, Any]) -> str:
    """The whole reply to one streaming ``/v1/chat/completions`` request for the same ``/chat`` ``values``."""
    messages = [{"role": "system", "content": values["system_prompt"]}] if "system_prompt" in values else []
    messages += [*values.get("history", []), {"role": "user", "content": values["message"]}]
    body = {"messages": messages, "stream": True, "max_tokens": values.get("max_new_tokens")}
    body.update({name: values[name] for name in OPENAI_FIELDS if name in values})
    request = urllib.request.Request(
        url + "v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    pieces = []
    with urllib.request.urlopen(request) as stream:
        for line in stream:
            if line.startswith(b"data: {"):
                event = json.loads(line[6:])
                if "error" in event:
                    raise RuntimeError(event["error"]["message"])
                pieces += [choice["delta"].get("content") or "" for choice in event["choices"]]
    return "".join(pieces)


OPENAI_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty", "seed")


class ClientProcess:
    """This script as a process of its own, serving the app at ``url`` (``openai``: through ``/v1``)."""

    def __init__(self, url: str, *, openai: bool = False) -> None:
        command = [sys.executable, __file__, url, *(["--openai"] if openai else [])]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def send(self, chats: list[dict[str, Any]]) -> dict[str, Any]:
        """Send ``chats`` at once; their wall seconds and reply texts."""
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(chats) + "\n")
        self._process.stdin.flush()
        return json.loads(self._process.stdout.readline())

    def close(self) -> None:
        self._process.kill()
        self._process.wait()


def main() -> None:
    url = sys.argv[1]
    if "--openai" in sys.argv[2:]:
        send = functools.partial(openai_chat, url)
    else:
        send = functools.partial(chat, url, chat_parameters(url))
    with ThreadPoolExecutor(64) as pool:
        for line in sys.stdin:
            chats = json.loads(line)
            started = time.perf_counter()
            texts = list(pool.map(send, chats))
            print(json.dumps({"seconds": time.perf_counter() - started, "texts": texts}), flush=True)


if __name__ == "__main__":
    main()
