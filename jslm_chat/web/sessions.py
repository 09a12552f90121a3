"""What Gradio keeps per browser session, bounded.

- At most :data:`SESSIONS_KEPT` sessions' state (the least recently used is dropped first).
- No copy of each event's inputs and outputs: Gradio 6 keeps one per session, in the session's
  config, for its deep links (``/gradio_api/deep_link`` writes that config to disk). The app offers
  no deep link and the guard refuses the route, so the copies would only hold memory: a 300,000-
  character conversation held by each of the kept sessions (``bench/bench_soak.py``, large requests
  from fresh sessions: with the copies, +112 MiB over the first 100 with only 64 sessions kept;
  without them, +41 MiB over the first 100 with 200 kept, flat after).
"""

from __future__ import annotations

from gradio import state_holder

SESSIONS_KEPT = 200
"""Browser sessions whose state Gradio keeps."""


def keep_no_event_copies() -> None:
    """Stop Gradio from copying each event's values into its session's deep-link config (process-wide)."""
    state_holder.SessionState._update_value_in_config = _no_copy  # no public setting (gradio 6)


def _no_copy(self: state_holder.SessionState, key: int, value: object) -> None:
    """Keep nothing: the session's config is read only by the deep-link route, which is refused."""
