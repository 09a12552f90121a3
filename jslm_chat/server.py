"""Start-up: settings → engine → UI → launch, with clear messages when loading or sharing fails."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import gradio as gr

from jslm_chat.chat.admission import Admission
from jslm_chat.chat.service import ChatService
from jslm_chat.model.backend import Backend
from jslm_chat.model.presets import resolve_preset
from jslm_chat.settings import Settings, parse_settings
from jslm_chat.web import guard, log_bounds, sessions
from jslm_chat.web.feedback import FeedbackLog
from jslm_chat.web.layout import build_ui, configure_queue, launch_options
from jslm_chat.web.openai_api import openai_router

logger = logging.getLogger(__name__)

DEMO_DISPLAY_NAME = "デモモデル (tiny demo, offline)"
VLLM_QUANTIZE_REFUSAL = (
    "--quantize {mode} は --backend vllm では使えません（vLLM は自分で量子化します）。"
    "対処: --quantize を外し、量子化済み (AWQ/GPTQ) のモデルを vllm serve で起動してください（docs/quantization.md）。"
    " / --quantize {mode} does not apply with --backend vllm (vLLM quantizes its own way):"
    " drop --quantize and serve a pre-quantized (AWQ/GPTQ) checkpoint with vllm serve (see docs/quantization.md)."
)


class StartupError(RuntimeError):
    """The backend cannot start (model not loadable, vLLM unreachable); the message says why and what to do."""


def load_for(settings: Settings) -> Backend:
    """The backend the settings ask for: in-process (the demo model or ``settings.model``) or vLLM.

    The one place that picks a backend. Raises :class:`StartupError`.
    """
    model = settings.model
    if settings.demo:
        from jslm_chat.demo_model import demo_model_dir

        model = str(demo_model_dir())
    if settings.backend == "vllm":
        from jslm_chat.backends.vllm import BackendUnavailableError, VllmBackend

        if settings.quantize in ("int8", "nf4"):
            raise StartupError(VLLM_QUANTIZE_REFUSAL.format(mode=settings.quantize))

        preset = resolve_preset(model)
        if settings.demo:
            preset = dataclasses.replace(preset, display_name=DEMO_DISPLAY_NAME)
        try:
            return VllmBackend.connect(settings.vllm_url, preset)
        except BackendUnavailableError as error:
            raise StartupError(str(error)) from error
    from jslm_chat.backends.inprocess.loading import ModelLoadError, load_inprocess_backend

    options: dict[str, Any] = {"device": settings.device, "dtype": settings.dtype, "quantize": settings.quantize}
    options["concurrency"] = settings.concurrency or Backend.default_concurrency
    if settings.demo:
        options = {**options, "device": "cpu" if settings.device == "auto" else settings.device}
        options["display_name"] = DEMO_DISPLAY_NAME
    try:
        return load_inprocess_backend(
            model, cache_slots=settings.cache_conversations, compiled=settings.compile, **options
        )
    except ModelLoadError as error:
        raise StartupError(str(error)) from error


def create_app(settings: Settings, backend: Backend | None = None) -> tuple[gr.Blocks, ChatService]:
    """The queued Gradio app for ``settings`` and its chat service (starting the backend unless given)."""
    backend = backend or load_for(settings)
    slots = settings.concurrency or backend.default_concurrency
    admission = Admission(slots=slots, max_waiting=settings.queue_size)
    service = ChatService(backend, settings.max_new_tokens_limit, admission)
    feedback = FeedbackLog(settings.feedback_dir) if settings.feedback_dir else None
    return configure_queue(build_ui(service, demo_mode=settings.demo, feedback=feedback)), service


def api_routes(service: ChatService, settings: Settings) -> list[Any]:
    """The OpenAI-compatible ``/v1`` routes, served beside Gradio's (which ``--auth`` does not cover)."""
    return openai_router(service, api_keys=settings.api_key, locked=bool(settings.auth)).routes


def launch(
    app: gr.Blocks, service: ChatService, settings: Settings, *, block: bool = True
) -> tuple[Any, str, str | None]:
    """Serve ``app``; with ``--share``, also a public link, or one clear line saying why not."""
    share = settings.share and not os.environ.get("SPACE_ID")
    if settings.share and not share:
        logger.info(
            "Spaces では --share は不要です（Space の URL をそのまま共有できます） / --share is ignored on Spaces"
        )
    options = launch_options()
    sessions.keep_no_event_copies()
    fastapi_app, local_url, share_url = app.launch(
        server_name=settings.host,
        server_port=settings.port,
        share=share,
        prevent_thread_lock=True,
        show_error=True,
        auth=list(settings.auth) or None,
        app_kwargs={
            "routes": api_routes(service, settings),
            **guard.app_kwargs(behind_proxy=settings.behind_proxy, favicon=options.get("favicon_path"), blocks=app),
        },
        state_session_capacity=sessions.SESSIONS_KEPT,
        quiet=not share,  # Gradio's own lines would tell the user to "set share=True in launch()"
        **options,
    )
    log_bounds.install()
    if not share:
        logger.info("%s で提供中 / Running on %s (a public link: --share)", local_url, local_url)
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
    except StartupError as error:
        print(error, file=sys.stderr)
        return 1
    launch(app, service, settings)
    return 0
