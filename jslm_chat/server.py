"""Start-up: settings → engine → UI → launch, with clear messages when loading or sharing fails."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import gradio as gr

from .admission import Admission
from .chat import ChatService
from .engine import Engine
from .loading import ModelLoadError, load_engine
from .settings import Settings, parse_settings
from .ui import build_ui, configure_queue, launch_options

logger = logging.getLogger(__name__)

DEMO_DISPLAY_NAME = "デモモデル (tiny demo, offline)"


def load_for(settings: Settings) -> Engine:
    """The engine the settings ask for: the demo model (built once, CPU) or ``settings.model``."""
    if settings.demo:
        from .demo_model import demo_model_dir

        device = "cpu" if settings.device == "auto" else settings.device
        return load_engine(str(demo_model_dir()), device=device, dtype=settings.dtype, display_name=DEMO_DISPLAY_NAME)
    return load_engine(settings.model, device=settings.device, dtype=settings.dtype)


def create_app(settings: Settings, engine: Engine | None = None) -> tuple[gr.Blocks, ChatService]:
    """The queued Gradio app for ``settings`` and its chat service (loading the engine unless given)."""
    engine = engine or load_for(settings)
    admission = Admission(slots=settings.concurrency, max_waiting=settings.queue_size)
    service = ChatService(engine, settings.max_new_tokens_limit, admission)
    return configure_queue(build_ui(service, demo_mode=settings.demo)), service


def launch(
    app: gr.Blocks, service: ChatService, settings: Settings, *, block: bool = True
) -> tuple[Any, str, str | None]:
    """Serve ``app``; with ``--share``, also a public link, or one clear line saying why not."""
    share = settings.share and not os.environ.get("SPACE_ID")
    if settings.share and not share:
        logger.info(
            "Spaces では --share は不要です（Space の URL をそのまま共有できます） / --share is ignored on Spaces"
        )
    fastapi_app, local_url, share_url = app.launch(
        server_name=settings.host,
        server_port=settings.port,
        share=share,
        prevent_thread_lock=True,
        show_error=True,
        **launch_options(service),
    )
    if share and not share_url:
        logger.warning(
            "公開リンクを作成できませんでした（インターネット接続が必要です）。%s でローカルに提供を続けます。"
            " / Could not create a public share link (it needs internet access); still serving locally at %s",
            local_url,
            local_url,
        )
    if block:
        app.block_thread()
    return fastapi_app, local_url, share_url


def serve(argv: Sequence[str] | None = None) -> int:
    """Parse flags, load the model and serve until interrupted. Returns the exit status."""
    settings = parse_settings(argv)
    try:
        app, service = create_app(settings)
    except ModelLoadError as error:
        print(error, file=sys.stderr)
        return 1
    launch(app, service, settings)
    return 0
