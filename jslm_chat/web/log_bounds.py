"""No request can write more than about a kilobyte to the log, whatever Gradio or uvicorn print.

Gradio prints a traceback (``traceback.print_exc``) for any error that is not a quiet
``gr.Error``, and some of its messages repeat the whole input (a wrong number of inputs echoes
every value). uvicorn logs a traceback for an error in a route. :func:`install` bounds both: a
traceback keeps its last frames and the exception's first characters, every line cut short; a
log record's message is cut the same way. A real fault still shows where it happened.
"""

from __future__ import annotations

import logging
import sys
import traceback
import types
from typing import IO, Any

MAX_LINE_CHARS = 240
MAX_MESSAGE_CHARS = 400
MAX_FRAMES = 4
MAX_TRACE_CHARS = 1_500
GRADIO_MODULES = ("gradio.queueing", "gradio.routes", "gradio.utils", "gradio.route_utils")
LOGGERS = ("uvicorn.error", "uvicorn.access", "gradio")


def cut(text: str, limit: int) -> str:
    """``text``, cut to ``limit`` characters with a note of how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit:,} characters cut]"


def bounded_traceback(error: BaseException) -> str:
    """The traceback of ``error``: its last frames and the start of its message, lines cut short."""
    frames = traceback.extract_tb(error.__traceback__)[-MAX_FRAMES:]
    lines = ["Traceback (most recent call last, bounded):"]
    lines += [f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}' for frame in frames]
    lines += cut(f"{type(error).__name__}: {error}", MAX_MESSAGE_CHARS).splitlines()
    lines = [cut(line, MAX_LINE_CHARS) for line in lines]
    return cut("\n".join(lines), MAX_TRACE_CHARS)


def print_exc(limit: int | None = None, file: IO[str] | None = None, chain: bool = True) -> None:
    """``traceback.print_exc``, bounded (see :func:`bounded_traceback`)."""
    error = sys.exc_info()[1]
    if error is not None:
        print(bounded_traceback(error), file=file or sys.stderr)


class BoundedRecords(logging.Filter):
    """Cuts each record's message and traceback (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = cut(message, MAX_MESSAGE_CHARS * 2), None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = bounded_traceback(record.exc_info[1])
            record.exc_info = None
        return True


class _BoundedTracebackModule(types.ModuleType):
    """The ``traceback`` module as Gradio's modules see it: everything as usual, ``print_exc`` bounded."""

    def __getattr__(self, name: str) -> Any:
        return getattr(traceback, name)


def install() -> None:
    """Bound what Gradio's modules and the server's loggers write (idempotent)."""
    bounded = _BoundedTracebackModule("traceback")
    bounded.print_exc = print_exc  # type: ignore[attr-defined]  # the one function replaced
    for name in GRADIO_MODULES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "traceback", None) is traceback:
            module.traceback = bounded  # type: ignore[attr-defined]  # Gradio calls traceback.print_exc()
    for filtered in [*map(logging.getLogger, LOGGERS), *logging.getLogger().handlers]:
        if not any(isinstance(existing, BoundedRecords) for existing in filtered.filters):
            filtered.addFilter(BoundedRecords())
