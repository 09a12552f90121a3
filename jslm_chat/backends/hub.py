"""Whether to reach the Hugging Face Hub at all: a quick probe instead of huggingface_hub's retries.

Without network, every hub request is retried for about 20 s, each retry logged. When the hub
cannot be reached within :data:`PROBE_SECONDS`, loading uses the local cache only and says so once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

PROBE_SECONDS = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"


def hub_reachable(endpoint: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to ``endpoint``'s host opens within ``timeout`` seconds.

    The probe runs in a daemon thread so that a name lookup that hangs cannot hold start-up.
    """
    parts = urlsplit(endpoint)
    address = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    reached = threading.Event()

    def probe() -> None:
        try:
            with socket.create_connection(address, timeout=timeout):
                reached.set()
        except OSError:
            pass

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return reached.is_set()


def local_files_only(source: str) -> bool:
    """Whether ``source`` must load from local files only: a hub id while the hub is unreachable.

    A local directory, or ``HF_HUB_OFFLINE`` already set, needs no probe.
    """
    if Path(source).expanduser().is_dir() or os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT)
    if hub_reachable(endpoint):
        return False
    logger.warning(
        "Hugging Face Hub (%s) に接続できません。キャッシュ済みのファイルだけを使います。"
        " / Cannot reach the Hugging Face Hub (%s): using cached files only.",
        endpoint,
        endpoint,
    )
    return True
