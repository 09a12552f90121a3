"""Gradio Blocks layout and event wiring. What each event does lives in ``ui_handlers``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from .api import register_api
from .chat import ChatService
from .feedback import FeedbackLog
from .params import SHOWN_SETTINGS, Setting
from .ui_handlers import ChatHandlers
from .ui_text import TRANSLATIONS, header_html

ASSETS = Path(__file__).resolve().parent.parent / "assets"
THREADS_BESIDES_GENERATION = 16  # Gradio worker threads for quick events and the API's /prompt
GRADIO_DEFAULT_THREADS = 40
LATEX_DELIMITERS = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "\\[", "right": "\\]", "display": True},
    {"left": "\\(", "right": "\\)", "display": False},
    {"left": "$", "right": "$", "display": False},
]
DOWNLOAD_JS = """(text, name) => {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], {type: "text/plain;charset=utf-8"}));
  link.download = name;
  document.body.appendChild(link);
  link.click();
  setTimeout(() => { URL.revokeObjectURL(link.href); link.remove(); }, 1000);
}"""

i18n = gr.I18n(**TRANSLATIONS)


def load_examples() -> list[str]:
    """Example prompts: blocks of ``assets/examples_ja.txt`` separated by two blank lines."""
    text = (ASSETS / "examples_ja.txt").read_text(encoding="utf-8")
    return [block.strip() for block in text.split("\n\n\n") if block.strip()]


def setting_control(spec: Setting, value: Any, max_new_tokens_limit: int) -> gr.components.Component:
    """The control for one setting: a slider for numbers, a text box for text and the seed."""
    common: dict[str, Any] = {"label": i18n(spec.label), "elem_id": "jslm-" + spec.name.replace("_", "-")}
    if spec.info:
        common["info"] = i18n(spec.info)
    if spec.step is None or spec.optional:
        extra = {"lines": 2} if spec.kind is str else {"placeholder": i18n("jslm_seed_placeholder"), "max_length": 10}
        return gr.Textbox("" if value is None else value, **common, **extra)
    high = spec.slider_high or spec.high or max_new_tokens_limit
    return gr.Slider(spec.low, high, value, step=spec.step, **common)


def build_ui(service: ChatService, *, demo_mode: bool = False, feedback: FeedbackLog | None = None) -> gr.Blocks:
    """The chat app: chat, settings, examples, status line, export, votes, and the ``/chat``, ``/prompt`` API."""
    handlers = ChatHandlers(service, feedback)
    backend = service.backend
    defaults = backend.preset.default_settings()
    with gr.Blocks(title="日本語 StableLM チャット / Japanese StableLM Chat") as app:
        generating = gr.State(False)
        logo = (ASSETS / "logo.svg").read_text(encoding="utf-8")
        model_name = backend.preset.display_name
        gr.HTML(
            header_html(model_name, backend.runs_on, backend.context_length, logo, demo_mode), elem_id="jslm-header"
        )
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
            editable="user",
            latex_delimiters=LATEX_DELIMITERS,
            feedback_options=("Like", "Dislike") if feedback else None,
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
        continue_button = gr.Button(i18n("jslm_continue"), visible=False, size="sm", elem_id="jslm-continue")
        status = gr.Markdown("", elem_id="jslm-status")
        comment = gr.Textbox(
            label=i18n("jslm_feedback_comment"), visible=feedback is not None, max_length=2000, elem_id="jslm-comment"
        )
        with gr.Accordion(i18n("jslm_settings"), open=False, elem_id="jslm-settings"):
            controls = [
                setting_control(spec, defaults[spec.name], service.max_new_tokens_limit) for spec in SHOWN_SETTINGS
            ]
            reset = gr.Button(i18n("jslm_reset"), size="sm")
        gr.Examples(load_examples(), inputs=[textbox], label=i18n("jslm_examples"), cache_examples=False)
        with gr.Row():
            export_json = gr.Button(i18n("jslm_export_json"), size="sm", elem_id="jslm-export-json")
            export_markdown = gr.Button(i18n("jslm_export_markdown"), size="sm", elem_id="jslm-export-md")
            exported = gr.Textbox(visible="hidden", elem_id="jslm-exported")
        _wire(
            handlers,
            chatbot=chatbot,
            textbox=textbox,
            send=send,
            status=status,
            generating=generating,
            controls=controls,
            buttons={
                "stop": stop_button,
                "retry": retry_button,
                "undo": undo_button,
                "clear": clear,
                "continue": continue_button,
                "reset": reset,
            },
        )
        _wire_extras(handlers, chatbot, controls, comment, (export_json, export_markdown, exported))
        register_api(service)
    return app


def _wire(
    handlers: ChatHandlers,
    *,
    chatbot: gr.Chatbot,
    textbox: gr.Textbox,
    send: gr.Button,
    status: gr.Markdown,
    generating: gr.State,
    controls: list[Any],
    buttons: dict[str, gr.Button],
) -> None:
    """Send, stream, Stop, Retry, Continue, edit, Undo, Clear and Reset."""
    instant: dict[str, Any] = {"queue": False, "api_visibility": "private"}
    streamed = [chatbot, textbox, status, buttons["continue"]]
    allow_sending = [generating, send]

    def then(event: Any, reply: Any) -> Any:
        """Generate after ``event`` succeeded; when done (or failed), allow sending again."""
        reply_event = event.success(
            reply,
            [chatbot, *controls],
            streamed,
            concurrency_limit=None,  # ChatService's admission decides who generates when
            api_visibility="private",
            show_progress="minimal",
        )
        reply_event.then(handlers.finish, None, allow_sending, **instant)
        return reply_event

    submitted = ([textbox, chatbot, generating], [textbox, chatbot, *allow_sending])
    reply_events = [
        then(textbox.submit(handlers.submit, *submitted, **instant), handlers.respond),
        then(send.click(handlers.submit, *submitted, **instant), handlers.respond),
        then(
            buttons["retry"].click(handlers.retry, [chatbot, generating], [chatbot, *allow_sending], **instant),
            handlers.respond,
        ),
        then(
            buttons["continue"].click(handlers.start_continue, [chatbot, generating], allow_sending, **instant),
            handlers.continue_reply,
        ),
        then(chatbot.edit(handlers.edit, [chatbot], [chatbot, *allow_sending], **instant), handlers.respond),
    ]
    buttons["stop"].click(handlers.stop, None, None, **instant)
    buttons["undo"].click(handlers.undo, [chatbot], [chatbot, textbox], **instant).then(
        handlers.finish, None, allow_sending, **instant
    )
    cleared = [chatbot, status, *allow_sending, buttons["continue"]]
    for clearing in (buttons["clear"].click, chatbot.clear):  # our button and the chatbot's own trash icon
        clearing(handlers.clear, None, cleared, cancels=reply_events, **instant)
    buttons["reset"].click(handlers.default_settings, None, controls, **instant)


def _wire_extras(
    handlers: ChatHandlers,
    chatbot: gr.Chatbot,
    controls: list[Any],
    comment: gr.Textbox,
    exports: tuple[gr.Button, gr.Button, gr.Textbox],
) -> None:
    """Downloads (made in the browser from text: no file is written on the server) and votes."""
    instant: dict[str, Any] = {"queue": False, "api_visibility": "private"}
    export_json, export_markdown, exported = exports
    for button, make, name in (
        (export_json, handlers.export_json, "conversation.json"),
        (export_markdown, handlers.export_markdown, "conversation.md"),
    ):
        button.click(make, [chatbot, *controls], exported, **instant).success(
            None, [exported], None, js=f"(text) => ({DOWNLOAD_JS})(text, {name!r})", **instant
        )
    if handlers.feedback is not None:
        chatbot.like(handlers.vote, [chatbot, comment, *controls], comment, **instant)


GRADIO_QUEUE_SIZE = 1024  # events waiting for a worker thread; replies wait in ChatService's own line


def configure_queue(app: gr.Blocks) -> gr.Blocks:
    """Gradio's queue (needed for streaming); ChatService's admission bounds generation.

    The size is explicit: on ZeroGPU, Gradio turns ``max_size=None`` into 1.
    """
    return app.queue(default_concurrency_limit=None, max_size=GRADIO_QUEUE_SIZE)


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
