"""Two costs Gradio 6 adds to every streamed update, removed (measured: ~4% of a reply's speed).

- Around each step of a streaming handler, Gradio runs ``import matplotlib`` twice (to switch its
  backend). Where matplotlib is not installed, nothing caches the failure: each attempt searches
  the whole ``sys.path`` again, ~0.7 ms holding the GIL, taken from the generation thread.
  Marking the module as absent makes the attempt fail at once.
- Gradio's queue looks for new events every millisecond and for progress every 10 ms: ~1,100
  wake-ups of the event loop a second, idle or not. Every ``QUEUE_POLL_SECONDS`` is plenty.
"""

from __future__ import annotations

import importlib.util
import sys

import gradio as gr

QUEUE_POLL_SECONDS = 0.01  # a new request starts at most this much later


def trim(app: gr.Blocks) -> gr.Blocks:
    """Remove both costs for ``app`` (already queued) and this process; returns ``app``."""
    if "matplotlib" not in sys.modules and importlib.util.find_spec("matplotlib") is None:
        sys.modules["matplotlib"] = None  # type: ignore[assignment]  # "import matplotlib" now fails at once
    queue = app._queue  # no public setting for either interval (gradio 6)
    queue.sleep_when_free = QUEUE_POLL_SECONDS
    queue.progress_update_sleep_when_free = QUEUE_POLL_SECONDS * 10  # the app reports no gr.Progress
    return app
