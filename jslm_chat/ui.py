"""Gradio Blocks layout and event wiring. No model logic: every request goes through ChatService."""

from __future__ import annotations

import html
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from .api import register_api
from .chat import USER_ERRORS, ChatRequest, ChatService, InLine, content_text
from .export import write_exports
from .gpu import stream_on_gpu
from .params import REPETITION_PENALTY_RANGE, TEMPERATURE_RANGE
from .ui_text import STOPPED, TRANSLATIONS, dropped_notice, status_line, waiting_line

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TOP_K_SLIDER_MAX = 200  # the API accepts up to TOP_K_RANGE; the slider keeps to useful values
THREADS_BESIDES_GENERATION = 16  # Gradio worker threads for quick events and the API's /prompt
GRADIO_DEFAULT_THREADS = 40

Message = dict[str, Any]
i18n = gr.I18n(**TRANSLATIONS)


def load_examples() -> list[str]:
    """Example prompts: blocks of ``assets/examples_ja.txt`` separated by two blank lines."""
    text = (ASSETS / "examples_ja.txt").read_text(encoding="utf-8")
    return [block.strip() for block in text.split("\n\n\n") if block.strip()]


def _nothing_to_do(message: str) -> gr.Error:
    """A silent error: it only stops the event chain (``.success`` steps do not run)."""
    return gr.Error(message, visible=False, print_exception=False)


def _busy(generating: bool) -> tuple[bool, gr.Button]:
    """The ``generating`` flag, and the Send button disabled while a reply is on its way."""
    return generating, gr.Button(interactive=not generating)


def _trim_to_last_user_message(history: list[Message]) -> list[Message]:
    trimmed = list(history)
    while trimmed and trimmed[-1].get("role") != "user":
        trimmed.pop()
    return trimmed


def build_ui(service: ChatService, *, demo_mode: bool = False) -> gr.Blocks:
    """The chat app: chat, settings, examples, status line, export, and the ``/chat``, ``/prompt`` API."""
    engine = service.engine
    preset = engine.preset
    defaults = preset.sampling
    limit = service.max_new_tokens_limit

    def submit(message: str, history: list[Message], generating: bool) -> tuple[Any, ...]:
        """Move a non-empty message from the textbox into the chat (the reply follows)."""
        if generating or not (message or "").strip():
            raise _nothing_to_do("送信するメッセージがありません / Nothing to send")
        return "", [*history, {"role": "user", "content": message}], *_busy(True)

    def respond(
        history: list[Message],
        system_prompt: str,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        repetition_penalty: float,
        seed: str,
        request: gr.Request,
    ) -> Iterator[tuple[Any, ...]]:
        """Stream the reply to the pending last user message into the chat and the status line."""
        settings = (system_prompt, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed)
        if not history or history[-1].get("role") != "user":
            return
        message = content_text(history[-1].get("content"))
        past = history[:-1]
        try:
            reply = service.reply(ChatRequest.from_values(message, past, *settings))
            if reply.prompt.dropped_turns:
                gr.Info(dropped_notice(reply.prompt.dropped_turns))
            shown = list(history)
            for item in service.run(reply, stream_on_gpu, session=request.session_hash):
                if isinstance(item, InLine):
                    yield gr.skip(), gr.skip(), waiting_line(item.ahead)
                else:
                    shown = [*history, {"role": "assistant", "content": item}]
                    yield shown, gr.skip(), status_line(reply, engine.context_length)
            # Stopped while still in line, the reply never started: say so.
            yield shown, gr.skip(), status_line(reply, engine.context_length) if reply.finish_reason else STOPPED
        except USER_ERRORS as error:
            gr.Warning(str(error), duration=None)
            # Nothing typed is lost: the message goes back into the textbox.
            yield past, message, f"⚠️ {error}"

    def stop(request: gr.Request) -> None:
        """Stop this browser session's reply; the reply's own stream then shows that it stopped."""
        service.stop(request.session_hash)

    def finish(history: list[Message], *settings: Any) -> tuple[Any, ...]:
        """After a reply (finished, failed or undone): allow sending again and refresh the exports."""
        if not history:
            return *_busy(False), None, None
        names = ("system_prompt", "max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed")
        metadata = {
            "model": preset.model_id,
            "device": engine.placement.device_label,
            "dtype": engine.dtype_label,
            **dict(zip(names, settings, strict=True)),
        }
        json_path, markdown_path = write_exports(history, metadata, Path(tempfile.mkdtemp(prefix="jslm-export-")))
        return *_busy(False), str(json_path), str(markdown_path)

    def retry(history: list[Message], generating: bool) -> tuple[Any, ...]:
        """Drop the last reply so that the last user message is answered again."""
        trimmed = _trim_to_last_user_message(history)
        if generating or not trimmed:
            raise _nothing_to_do("再生成する返答がありません / Nothing to retry")
        return trimmed, *_busy(True)

    def undo(history: list[Message]) -> tuple[Any, ...]:
        """Remove the last turn and put its message back into the textbox."""
        trimmed = _trim_to_last_user_message(history)
        if not trimmed:
            return [], gr.skip()
        last = trimmed.pop()
        return trimmed, content_text(last.get("content"))

    def reset_settings() -> tuple[Any, ...]:
        return (
            preset.system_prompt,
            defaults.max_new_tokens,
            defaults.temperature,
            defaults.top_p,
            defaults.top_k,
            defaults.repetition_penalty,
            "",
        )

    # ---- layout ------------------------------------------------------------------------------

    with gr.Blocks(title="日本語 StableLM チャット / Japanese StableLM Chat") as app:
        generating = gr.State(False)
        gr.HTML(header_html(service, demo_mode), elem_id="jslm-header")
        if demo_mode:
            gr.Markdown(i18n("jslm_demo_banner"), elem_id="jslm-demo-banner", elem_classes=["jslm-banner"])
        chatbot = gr.Chatbot(
            label="会話 / Chat",
            show_label=False,
            elem_id="jslm-chatbot",
            height=520,
            buttons=["copy", "copy_all"],
            placeholder=i18n("jslm_chat_placeholder"),
            layout="bubble",
            feedback_options=None,
        )
        with gr.Row(equal_height=True):
            textbox = gr.Textbox(
                label=i18n("jslm_message"),
                show_label=False,
                placeholder=i18n("jslm_message_placeholder"),
                lines=1,  # Gradio: Enter sends only when lines == 1; the box still grows to max_lines
                max_lines=10,
                autofocus=True,
                scale=8,
                elem_id="jslm-input",
            )
            send = gr.Button(i18n("jslm_send"), variant="primary", scale=1, min_width=90, elem_id="jslm-send")
        with gr.Row(elem_id="jslm-actions"):  # one row, phones included
            action = {"size": "sm", "min_width": 64}
            stop_button = gr.Button(i18n("jslm_stop"), variant="stop", elem_id="jslm-stop", **action)
            retry_button = gr.Button(i18n("jslm_retry"), elem_id="jslm-retry", **action)
            undo_button = gr.Button(i18n("jslm_undo"), elem_id="jslm-undo", **action)
            clear = gr.Button(i18n("jslm_clear"), elem_id="jslm-clear", **action)
        status = gr.Markdown("", elem_id="jslm-status")
        with gr.Accordion(i18n("jslm_settings"), open=False, elem_id="jslm-settings"):
            system_prompt = gr.Textbox(
                preset.system_prompt, label=i18n("jslm_system_prompt"), info=i18n("jslm_system_prompt_info"), lines=2
            )
            with gr.Row():
                max_new_tokens = gr.Slider(
                    1,
                    limit,
                    defaults.max_new_tokens,
                    step=1,
                    label=i18n("jslm_max_new_tokens"),
                    elem_id="jslm-max-new-tokens",
                )
                temperature = gr.Slider(
                    *TEMPERATURE_RANGE,
                    defaults.temperature,
                    step=0.05,
                    label=i18n("jslm_temperature"),
                    info=i18n("jslm_temperature_info"),
                )
            with gr.Row():
                top_p = gr.Slider(
                    0.05, 1.0, defaults.top_p, step=0.01, label=i18n("jslm_top_p"), info=i18n("jslm_top_p_info")
                )
                top_k = gr.Slider(
                    0, TOP_K_SLIDER_MAX, defaults.top_k, step=1, label=i18n("jslm_top_k"), info=i18n("jslm_top_k_info")
                )
            with gr.Row():
                repetition_penalty = gr.Slider(
                    *REPETITION_PENALTY_RANGE,
                    defaults.repetition_penalty,
                    step=0.01,
                    label=i18n("jslm_repetition_penalty"),
                    info=i18n("jslm_repetition_penalty_info"),
                )
                seed = gr.Textbox(
                    "",
                    label=i18n("jslm_seed"),
                    info=i18n("jslm_seed_info"),
                    placeholder=i18n("jslm_seed_placeholder"),
                    max_length=10,
                    elem_id="jslm-seed",
                )
            reset = gr.Button(i18n("jslm_reset"), size="sm")
        gr.Examples(load_examples(), inputs=[textbox], label=i18n("jslm_examples"), cache_examples=False)
        with gr.Row():
            export_json = gr.DownloadButton(i18n("jslm_export_json"), size="sm", elem_id="jslm-export-json")
            export_markdown = gr.DownloadButton(i18n("jslm_export_markdown"), size="sm", elem_id="jslm-export-md")

        settings_inputs = [system_prompt, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed]
        exports = [export_json, export_markdown]
        instant: dict[str, Any] = {"queue": False, "api_visibility": "private"}

        def then_respond(event: Any) -> Any:
            """Generate after ``event`` succeeded; when done (or failed), refresh the exports."""
            reply_event = event.success(
                respond,
                [chatbot, *settings_inputs],
                [chatbot, textbox, status],
                concurrency_limit=None,  # ChatService's admission decides who generates when
                api_visibility="private",
                show_progress="minimal",
            )
            reply_event.then(finish, [chatbot, *settings_inputs], [generating, send, *exports], **instant)
            return reply_event

        submit_io = ([textbox, chatbot, generating], [textbox, chatbot, generating, send])
        reply_events = [
            then_respond(textbox.submit(submit, *submit_io, **instant)),
            then_respond(send.click(submit, *submit_io, **instant)),
            then_respond(retry_button.click(retry, [chatbot, generating], [chatbot, generating, send], **instant)),
        ]
        stop_button.click(stop, None, None, **instant)
        undo_button.click(undo, [chatbot], [chatbot, textbox], cancels=reply_events, **instant).then(
            finish, [chatbot, *settings_inputs], [generating, send, *exports], **instant
        )
        for clearing in (clear.click, chatbot.clear):  # our button and the chatbot's own trash icon
            clearing(
                lambda: ([], "", *_busy(False), None, None),
                None,
                [chatbot, status, generating, send, *exports],
                cancels=reply_events,
                **instant,
            )
        reset.click(reset_settings, None, settings_inputs, **instant)
        register_api(service)
    return app


def header_html(service: ChatService, demo_mode: bool) -> str:
    """The header: logo, title, model name, device and dtype."""
    engine = service.engine
    model = html.escape(engine.preset.display_name)
    badge = ' <span class="jslm-demo-badge">DEMO</span>' if demo_mode else ""
    return (
        '<div class="jslm-header">'
        f'<span class="jslm-logo" aria-hidden="true">{(ASSETS / "logo.svg").read_text(encoding="utf-8")}</span>'
        "<div>"
        f"<h1>日本語 StableLM チャット{badge}</h1>"
        f'<p class="jslm-model">モデル (model): <b>{model}</b> · '
        f"デバイス (device): <b>{html.escape(engine.placement.device_label)}</b> · "
        f"dtype: <b>{html.escape(engine.dtype_label)}</b> · "
        f"コンテキスト (context): <b>{engine.context_length:,}</b></p>"
        "</div></div>"
    )


def configure_queue(app: gr.Blocks) -> gr.Blocks:
    """Gradio's queue (needed for streaming), unbounded: ChatService's admission bounds generation."""
    return app.queue(default_concurrency_limit=None, max_size=None)


def launch_options(service: ChatService) -> dict[str, Any]:
    """Theme, CSS, script, translations, favicon and worker threads for ``Blocks.launch``."""
    admission = service.admission
    return {
        "theme": gr.themes.Soft(
            primary_hue="indigo",
            font=["Hiragino Sans", "Noto Sans JP", "Yu Gothic UI", "Meiryo", "system-ui", "sans-serif"],
            font_mono=["Noto Sans Mono CJK JP", "ui-monospace", "monospace"],
        ),
        "css_paths": [ASSETS / "style.css"],
        "js": (ASSETS / "app.js").read_text(encoding="utf-8"),
        "i18n": i18n,
        "favicon_path": str(ASSETS / "favicon.svg"),
        # Every running or waiting reply holds a worker thread; never fewer than Gradio's default.
        "max_threads": max(
            GRADIO_DEFAULT_THREADS, admission.slots + admission.max_waiting + THREADS_BESIDES_GENERATION
        ),
    }
