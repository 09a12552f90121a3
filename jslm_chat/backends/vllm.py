"""The vLLM backend: replies come from a vLLM server over its OpenAI-compatible HTTP API.

The app keeps only the tokenizer: it builds the exact prompt token ids (as the in-process backend
does) and sends them to ``POST /v1/completions`` as a list of ids, streaming, with
``return_token_ids``; the text shown is decoded from the generated ids by
:class:`~jslm_chat.model.detokenizer.IncrementalDetokenizer`, so both backends stream the same text.

Each reply has its own HTTP connection, read by a helper thread. :meth:`VllmReply.stop` shuts
that connection's socket down from whatever thread calls it, which never blocks, and vLLM aborts a
request whose connection closes, during prompt processing too. A server that dies or goes silent
mid-reply gives a :class:`~jslm_chat.model.backend.GenerationError` within seconds (silence is checked
against ``/health``); the next reply opens a new connection, so a restarted server just works.
The standard library does the HTTP: this module needs no new dependency and never imports torch.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import queue
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from jslm_chat.backends.hub import local_files_only
from jslm_chat.model.backend import Backend, GenerationError, ReplyStream
from jslm_chat.model.detokenizer import IncrementalDetokenizer
from jslm_chat.model.params import GenerationParams
from jslm_chat.model.presets import ModelPreset
from jslm_chat.model.prompt import RenderedPrompt

logger = logging.getLogger(__name__)

START_HINT = (
    "vLLM の起動例 / To start one: python -m vllm.entrypoints.openai.api_server --model MODEL --port 8000"
    " (vLLM は専用の環境に入れてください / install vLLM in its own environment; see README)"
)
VLLM_FINISH_REASONS = {"stop": "eos", "length": "length"}  # vLLM's → ours
CONNECT_TIMEOUT_SECONDS = 10.0
_END = object()  # the reader thread's last item
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+([0-9.eE+-]+)$", re.MULTILINE)  # Prometheus text


class BackendUnavailableError(RuntimeError):
    """The vLLM server (or the tokenizer for it) cannot be used; the message is bilingual."""


@dataclass(frozen=True)
class Endpoint:
    """Where the vLLM server listens: ``http(s)://host:port/optional/prefix``."""

    url: str

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BackendUnavailableError(
                f"vLLM の URL が正しくありません: {self.url!r}（例: http://127.0.0.1:8000）"
                f" / Not a valid vLLM URL: {self.url!r} (example: http://127.0.0.1:8000)"
            )

    def connection(self, timeout: float | None) -> http.client.HTTPConnection:
        """A new, not yet connected HTTP connection to the server."""
        parts = urlsplit(self.url)
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        return kind(parts.hostname or "", parts.port, timeout=timeout)

    def path(self, route: str) -> str:
        """The request path of ``route`` (``/v1/models``) under the URL's own path."""
        return urlsplit(self.url).path.rstrip("/") + route

    def get(self, route: str, timeout: float) -> tuple[int, bytes]:
        """``GET route``: status and body. Raises ``OSError`` when the server cannot be reached."""
        connection = self.connection(timeout)
        try:
            connection.request("GET", self.path(route))
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def healthy(self, timeout: float = 5.0) -> bool:
        """Whether ``GET /health`` answers 200 within ``timeout`` seconds."""
        try:
            return self.get("/health", timeout)[0] == 200
        except (OSError, http.client.HTTPException):
            return False


class VllmBackend(Backend):
    """Replies from a vLLM server; the app holds only the tokenizer and builds the exact prompts."""

    default_concurrency = 64
    """vLLM batches replies continuously: many at once cost little more than one."""

    def __init__(
        self,
        preset: ModelPreset,
        tokenizer: Any,
        endpoint: Endpoint,
        served_model: str,
        *,
        probe_seconds: float = 5.0,
        max_silence_seconds: float = 300.0,
    ) -> None:
        super().__init__(preset, tokenizer)
        self.endpoint = endpoint
        self.served_model = served_model
        self.probe_seconds = probe_seconds
        self.max_silence_seconds = max_silence_seconds

    @classmethod
    def connect(
        cls,
        url: str,
        preset: ModelPreset,
        tokenizer_source: str | None = None,
        *,
        timeout: float = 10.0,
        probe_seconds: float = 5.0,
        max_silence_seconds: float = 300.0,
    ) -> VllmBackend:
        """Check the server at ``url`` and load the tokenizer (``tokenizer_source`` or the preset's id).

        The context window becomes the server's ``max_model_len``. Raises
        :class:`BackendUnavailableError` when the server cannot be reached or the tokenizer loaded.
        """
        endpoint = Endpoint(url.rstrip("/"))
        served_model, max_model_len = _served_model(endpoint, preset, timeout)
        tokenizer = _load_tokenizer(tokenizer_source or preset.model_id)
        if max_model_len:
            preset = preset.fitted_to_context(max_model_len)
        logger.info("using vLLM at %s: %s, %d tokens of context", endpoint.url, served_model, preset.context_length)
        return cls(
            preset,
            tokenizer,
            endpoint,
            served_model,
            probe_seconds=probe_seconds,
            max_silence_seconds=max_silence_seconds,
        )

    @property
    def runs_on(self) -> str:
        """``vLLM (http://host:port)``."""
        return f"vLLM ({self.endpoint.url})"

    def metric(self, *names: str, timeout: float = 5.0) -> float:
        """The sum of every sample of the ``/metrics`` series ``names`` (all labels), read once.

        The app itself never reads it: tests and benchmarks observe the server through the backend's own
        connection (its address, timeouts and errors), so it stays here rather than in a second HTTP client.
        """
        status, body = self.endpoint.get("/metrics", timeout)
        if status != 200:
            raise OSError(f"GET /metrics answered HTTP {status}")
        return sum(float(value) for name, value in _SAMPLE.findall(body.decode()) if name in names)

    def requests_in_flight(self, timeout: float = 5.0) -> int:
        """Requests the server is running or holding in its queue now (``/metrics``)."""
        return round(self.metric("vllm:num_requests_running", "vllm:num_requests_waiting", timeout=timeout))

    def _start(self, prompt: RenderedPrompt, params: GenerationParams) -> VllmReply:
        return VllmReply(self, prompt, params)


class VllmReply(ReplyStream):
    """One reply streamed from vLLM. ``stop()`` closes the connection, which makes vLLM abort it."""

    POLL_SECONDS = 0.05

    def __init__(self, backend: VllmBackend, prompt: RenderedPrompt, params: GenerationParams) -> None:
        super().__init__(prompt, params)
        self._backend = backend
        self._events: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._detokenizer = IncrementalDetokenizer(backend.tokenizer, skip_special_tokens=True)

    def stop(self) -> None:
        """Stop now: shut the connection down (vLLM then aborts the request). Never blocks."""
        super().stop()
        with self._lock:
            sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)

    def request_body(self) -> dict[str, Any]:
        """The JSON body of ``POST /v1/completions`` for this reply."""
        params = self.params
        body: dict[str, Any] = {
            "model": self._backend.served_model,
            "prompt": self.prompt.token_ids,
            "stream": True,
            "stream_options": {"include_usage": True},
            "return_token_ids": True,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,  # 0: greedy
            "top_p": params.top_p,
            "top_k": params.top_k,  # 0: off
            "repetition_penalty": params.repetition_penalty,
            "ignore_eos": params.ignore_eos,
            "skip_special_tokens": True,
        }
        if not params.greedy:  # a seed only matters when sampling
            body["seed"] = self.seed
        return body

    def _generate(self) -> Iterator[str]:
        threading.Thread(target=self._read, name="jslm-vllm-read", daemon=True).start()
        for event in self._server_events():
            if "error" in event:  # a mid-stream error comes as an event, after HTTP 200
                raise self._error(f"vLLM: {_error_message(event)}")
            self._read_usage(event.get("usage"))
            for choice in event.get("choices") or []:
                ids = choice.get("token_ids") or []
                self._count_tokens(len(ids))
                text = self._detokenizer.feed(ids)
                if text:
                    yield text
                self._finish(choice.get("finish_reason"))
        if self.finish_reason is None and not self.stopped:  # [DONE] with no reason: vLLM gave up on it
            raise self._error("返信が途中で終わりました / the reply ended unfinished")

    def _finish(self, reason: str | None) -> None:
        """Map vLLM's finish reason; one it gives on its own (``abort``) is an error."""
        if reason is None or self.stopped:
            return
        if reason == "abort":
            raise self._error(
                "vLLM が返信を中止しました（サーバーの停止など） / vLLM aborted the reply (shutting down?)"
            )
        if reason not in VLLM_FINISH_REASONS:
            raise self._error(f"finish_reason={reason}")
        self.finish_reason = VLLM_FINISH_REASONS[reason]

    def _server_events(self) -> Iterator[dict[str, Any]]:
        """The stream's JSON events from the reader thread; bounds silence; ends at ``[DONE]``."""
        backend = self._backend
        heard_at = checked_at = time.monotonic()
        while True:
            try:
                item = self._events.get(timeout=self.POLL_SECONDS)
            except queue.Empty:
                now = time.monotonic()
                if self.stopped:
                    return
                if now - heard_at > backend.max_silence_seconds:
                    silence = f"{backend.max_silence_seconds:.0f}"
                    raise self._error(f"{silence} 秒間応答なし / no answer for {silence} s") from None
                if now - checked_at > backend.probe_seconds:
                    checked_at = now
                    if not backend.endpoint.healthy():
                        raise self._error("サーバーが応答しません / the server stopped answering") from None
                continue
            heard_at = checked_at = time.monotonic()
            if self.stopped:
                return
            if item is _END:
                raise self._error("接続が途中で切れました / the connection closed mid-reply")
            if isinstance(item, _HttpError):
                raise self._error(str(item))
            if isinstance(item, BaseException):
                raise self._error(f"{type(item).__name__}: {item}", item) from item
            if item == b"[DONE]":
                return
            try:
                event = json.loads(item)
            except ValueError as error:
                raise self._error(f"not JSON: {item[:200]!r}", error) from error
            yield event

    def _read(self) -> None:
        """Reader thread: send the request, queue each SSE ``data:`` payload, then ``_END``."""
        endpoint = self._backend.endpoint
        connection = endpoint.connection(timeout=CONNECT_TIMEOUT_SECONDS)
        try:
            connection.connect()
            with self._lock:
                if self.stopped:
                    return
                self._socket = connection.sock
            connection.sock.settimeout(None)  # silence is bounded by the consumer, which probes /health
            payload = json.dumps(self.request_body()).encode()
            connection.request("POST", endpoint.path("/v1/completions"), payload, {"Content-Type": "application/json"})
            response = connection.getresponse()
            if response.status != 200:
                self._events.put(_http_error(response.status, response.read()))
                return
            for line in response:
                if line.startswith(b"data:"):
                    self._events.put(line[5:].strip())
        except Exception as error:  # handed to the consumer, which reports it (or ignores it after stop)
            self._events.put(error)
        finally:
            connection.close()
            self._events.put(_END)

    def _read_usage(self, usage: dict[str, Any] | None) -> None:
        """Prompt tokens vLLM's prefix cache held (the last event's usage, with ``--enable-prompt-tokens-details``)."""
        details = (usage or {}).get("prompt_tokens_details") or {}
        if "cached_tokens" in details:
            self.reused_tokens = int(details["cached_tokens"] or 0)

    def _error(self, cause: str, fault: BaseException | None = None) -> GenerationError:
        """The bilingual error for the chat; logged with ``fault``'s traceback when there is one."""
        url = self._backend.endpoint.url
        logger.error("vLLM reply failed (%s): %s", url, cause, exc_info=fault)
        return GenerationError(
            f"vLLM サーバー ({url}) での生成に失敗しました: {cause}。"
            "サーバーが動いていることを確かめて、もう一度送信してください。"
            f" / Generation on the vLLM server ({url}) failed: {cause}. Check that the server is running,"
            " then send the message again."
        )


class _HttpError(Exception):
    """vLLM refused the request (HTTP 4xx/5xx); the message is vLLM's own."""


def _http_error(status: int, body: bytes) -> _HttpError:
    try:
        message = _error_message(json.loads(body))
    except (ValueError, AttributeError):
        message = body.decode(errors="replace").strip() or http.client.responses.get(status, "")
    return _HttpError(f"HTTP {status}: {message}")


def _error_message(event: dict[str, Any]) -> str:
    """vLLM's message in ``{"error": {"message": ...}}``, ``{"error": "..."}`` or ``{"message": ...}``."""
    error = event.get("error", event)
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)


def _served_model(endpoint: Endpoint, preset: ModelPreset, timeout: float) -> tuple[str, int | None]:
    """The served model name (the preset's, if served) and its ``max_model_len``, from ``/v1/models``."""
    try:
        status, body = endpoint.get("/v1/models", timeout)
        if status != 200:
            raise OSError(f"GET /v1/models answered HTTP {status}")
        models = json.loads(body)["data"]
    except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as error:
        raise BackendUnavailableError(
            f"vLLM サーバー {endpoint.url} に接続できません（{error}）。"
            "サーバーを起動するか、--vllm-url を確かめてください。"
            f" / Cannot connect to the vLLM server at {endpoint.url} ({error}): start one or check --vllm-url.\n"
            f"{START_HINT}"
        ) from error
    if not models:
        raise BackendUnavailableError(
            f"vLLM サーバー {endpoint.url} がモデルを提供していません。"
            f" / The vLLM server at {endpoint.url} serves no model."
        )
    wanted = [m for m in models if m.get("id") in (preset.model_id, preset.key)]
    chosen = (wanted or models)[0]
    length = chosen.get("max_model_len")
    return str(chosen["id"]), int(length) if length else None


def _load_tokenizer(source: str) -> Any:
    """The tokenizer from a hub id or a local directory (transformers is imported only here)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=local_files_only(source))
    except Exception as error:
        raise BackendUnavailableError(
            f"トークナイザー {source} を読み込めません: {error} / Cannot load the tokenizer {source}: {error}"
        ) from error
