"""Gradio Blocks layout and event wiring. No model logic: everything goes through ChatService."""

from __future__ import annotations

import html
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr

from .chat import ChatInputError, ChatRequest, ChatService, content_text
from .engine import GenerationError, Reply
from .export import write_exports
from .params import (
    REPETITION_PENALTY_RANGE,
    TEMPERATURE_RANGE,
    GenerationParams,
    InvalidParameterError,
)
from .prompt import PromptTooLongError
from .ui_text import TRANSLATIONS

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
GENERATION_CONCURRENCY_ID = "generation"
TOP_K_SLIDER_MAX = 200  # the API accepts up to TOP_K_RANGE; the slider keeps to useful values
BUSY_MESSAGE = (
    "ただいま混雑しています。しばらくしてからもう一度お試しください。"
    " / The server is busy: please try again in a moment."
)
USER_ERRORS = (ChatInputError, InvalidParameterError, PromptTooLongError, GenerationError)

F = TypeVar("F", bound=Callable[..., Any])

i18n = gr.I18n(**TRANSLATIONS)


def on_gpu(function: F) -> F:
    """Wrap a generating function with ``spaces.GPU`` (ZeroGPU); a no-op elsewhere."""
    try:
        import spaces
    except ImportError:
        return function
    return spaces.GPU(duration=120)(function)


def load_examples() -> list[str]:
    """Example prompts, one per blank-line-separated block of ``assets/examples_ja.txt``."""
    text = (ASSETS / "examples_ja.txt").read_text(encoding="utf-8")
    return [block.strip() for block in text.split("\n\n\n") if block.strip()]


def status_text(reply: Reply, context_length: int) -> str:
    """The line under the chat: context used, speed, turns left out, seed."""
    used = reply.prompt.num_tokens + reply.new_tokens
    parts = [f"コンテキスト (context): {used:,} / {context_length:,} トークン"]
    speed = reply.tokens_per_second
    parts.append(f"速度 (speed): {speed:.1f} トークン/秒 (tok/s)" if speed else "速度 (speed): –")
    parts.append(f"省略したターン (turns left out): {reply.prompt.dropped_turns}")
    parts.append(f"シード (seed): {reply.seed}")
    if reply.finish_reason == "stopped":
        parts.append("停止しました (stopped)")
    elif reply.finish_reason == "length":
        parts.append("最大生成トークン数に達しました (hit max_new_tokens)")
    return " · ".join(parts)


def dropped_notice(dropped: int) -> str:
    """What the user is told when old turns no longer fit the context window."""
    return (
        f"古いやり取り {dropped} ターン分がコンテキストに入りきらないため、モデルには送っていません。"
        f" / {dropped} old turn(s) no longer fit the context window and were left out."
    )


def _optional_seed(value: float | None) -> int | None:
    return None if value is None or value == "" else value  # type: ignore[return-value]


def build_ui(service: ChatService, *, demo_mode: bool = False) -> gr.Blocks:
    """The chat app: chat, settings, examples, status line, export, and the ``/chat``, ``/prompt`` API."""
    engine = service.engine
    preset = engine.preset
    defaults = preset.sampling
    limit = service.max_new_tokens_limit

    def request_from(
        message: str,
        history: list[dict[str, Any]] | None,
        system_prompt: str,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        repetition_penalty: float,
        seed: int | None,
    ) -> ChatRequest:
        params = GenerationParams(max_new_tokens, temperature, top_p, top_k, repetition_penalty, _optional_seed(seed))
        return ChatRequest(message or "", history or [], system_prompt or "", params)

    # ---- API ---------------------------------------------------------------------------------

    @on_gpu
    def chat(
        message: str,
        history: list[dict[str, Any]] | None = None,
        system_prompt: str = preset.system_prompt,
        max_new_tokens: int = defaults.max_new_tokens,
        temperature: float = defaults.temperature,
        top_p: float = defaults.top_p,
        top_k: int = defaults.top_k,
        repetition_penalty: float = defaults.repetition_penalty,
        seed: int | None = None,
    ) -> Iterator[str]:
        """Stream the growing reply to `message`, given the earlier `history` ({role, content} dicts)."""
        request = request_from(
            message, history, system_prompt, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed
        )
        try:
            with service.reply(request) as reply:
                yield from reply
        except USER_ERRORS as error:
            raise gr.Error(str(error)) from error

    def prompt(
        message: str,
        history: list[dict[str, Any]] | None = None,
        system_prompt: str = preset.system_prompt,
        max_new_tokens: int = defaults.max_new_tokens,
        temperature: float = defaults.temperature,
        top_p: float = defaults.top_p,
        top_k: int = defaults.top_k,
        repetition_penalty: float = defaults.repetition_penalty,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """The exact prompt the model would see for these inputs, without generating."""
        request = request_from(
            message, history, system_prompt, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed
        )
        try:
            rendered = service.prompt(request)
        except USER_ERRORS as error:
            raise gr.Error(str(error)) from error
        return {
            "prompt": rendered.text,
            "token_ids": rendered.token_ids,
            "num_tokens": rendered.num_tokens,
            "dropped_turns": rendered.dropped_turns,
        }

    # ---- UI handlers -------------------------------------------------------------------------

    def submit(message: str, history: list[dict[str, Any]], generating: bool) -> tuple[Any, ...]:
        """Move a non-empty message from the textbox into the chat (the reply follows)."""
        if generating or not (message or "").strip():
            raise gr.Error(
                "送信するメッセージがありません / Nothing to send",
                visible=False,
                print_exception=False,
            )
        return "", [*history, {"role": "user", "content": message}], True

    @on_gpu
    def respond(
        history: list[dict[str, Any]],
        system_prompt: str,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        repetition_penalty: float,
        seed: float | None,
    ) -> Iterator[tuple[Any, ...]]:
        """Stream the reply to the pending last user message into the chat and the status line."""
        if not history or history[-1].get("role") != "user":
            return
        message = content_text(history[-1].get("content"))
        past = history[:-1]
        request = request_from(
            message,
            past,
            system_prompt,
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            repetition_penalty,
            None if seed is None else int(seed),
        )
        try:
            with service.reply(request) as reply:
                if reply.prompt.dropped_turns:
                    gr.Info(dropped_notice(reply.prompt.dropped_turns))
                shown = [*history, {"role": "assistant", "content": ""}]
                yield shown, gr.skip(), status_text(reply, engine.context_length)
                for text in reply:
                    shown[-1] = {"role": "assistant", "content": text}
                    yield shown, gr.skip(), gr.skip()
                yield shown, gr.skip(), status_text(reply, engine.context_length)
        except USER_ERRORS as error:
            gr.Warning(str(error), duration=None)
            # Nothing typed is lost: the message goes back into the textbox.
            yield past, message, f"⚠️ {error}"

    def finish(history: list[dict[str, Any]], system_prompt: str) -> tuple[Any, ...]:
        """After a reply (finished, failed or stopped): allow sending again and refresh exports."""
        json_path, markdown_path = export_files(history, system_prompt)
        return False, json_path, markdown_path

    def export_files(history: list[dict[str, Any]], system_prompt: str) -> tuple[str | None, str | None]:
        if not history:
            return None, None
        metadata = {
            "model": preset.model_id,
            "system_prompt": system_prompt,
            "device": engine.placement.device_label,
            "dtype": engine.dtype_label,
        }
        json_path, markdown_path = write_exports(history, metadata, Path(tempfile.mkdtemp(prefix="jslm-export-")))
        return str(json_path), str(markdown_path)

    def stopped(history: list[dict[str, Any]], system_prompt: str) -> tuple[Any, ...]:
        """Stop pressed: the server-side generation is cancelled; keep what was generated."""
        return (False, *export_files(history, system_prompt), "停止しました (stopped)")

    def retry(history: list[dict[str, Any]], generating: bool) -> tuple[Any, ...]:
        """Drop the last reply so that the last user message is answered again."""
        trimmed = list(history)
        while trimmed and trimmed[-1].get("role") != "user":
            trimmed.pop()
        if generating or not trimmed:
            raise gr.Error("再生成する返答がありません / Nothing to retry", visible=False, print_exception=False)
        return trimmed, True

    def undo(history: list[dict[str, Any]]) -> tuple[Any, ...]:
        """Remove the last turn and put its message back into the textbox."""
        trimmed = list(history)
        while trimmed and trimmed[-1].get("role") != "user":
            trimmed.pop()
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
            None,
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
        with gr.Row():
            stop = gr.Button(i18n("jslm_stop"), variant="stop", size="sm", elem_id="jslm-stop")
            retry_button = gr.Button(i18n("jslm_retry"), size="sm", elem_id="jslm-retry")
            undo_button = gr.Button(i18n("jslm_undo"), size="sm", elem_id="jslm-undo")
            clear = gr.Button(i18n("jslm_clear"), size="sm", elem_id="jslm-clear")
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
                seed = gr.Number(None, label=i18n("jslm_seed"), info=i18n("jslm_seed_info"), precision=0, minimum=0)
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
                concurrency_id=GENERATION_CONCURRENCY_ID,
                api_visibility="private",
                show_progress="minimal",
            )
            reply_event.then(finish, [chatbot, system_prompt], [generating, *exports], **instant)
            return reply_event

        submit_io = ([textbox, chatbot, generating], [textbox, chatbot, generating])
        reply_events = [
            then_respond(textbox.submit(submit, *submit_io, **instant)),
            then_respond(send.click(submit, *submit_io, **instant)),
            then_respond(retry_button.click(retry, [chatbot, generating], [chatbot, generating], **instant)),
        ]
        stop.click(stopped, [chatbot, system_prompt], [generating, *exports, status], cancels=reply_events, **instant)
        undo_button.click(undo, [chatbot], [chatbot, textbox], cancels=reply_events, **instant).then(
            finish, [chatbot, system_prompt], [generating, *exports], **instant
        )
        for clearing in (clear.click, chatbot.clear):  # our button and the chatbot's own trash icon
            clearing(
                lambda: ([], "", False, None, None),
                None,
                [chatbot, status, generating, *exports],
                cancels=reply_events,
                **instant,
            )
        reset.click(reset_settings, None, settings_inputs, **instant)

        gr.api(chat, api_name="chat", concurrency_id=GENERATION_CONCURRENCY_ID)
        gr.api(prompt, api_name="prompt", concurrency_limit=None)
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


def configure_queue(app: gr.Blocks, concurrency: int, queue_size: int) -> gr.Blocks:
    """Bound the queue: ``concurrency`` generations at once, ``queue_size`` waiting, then 'busy'."""
    app.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    _translate_queue_full(app)
    return app


def _translate_queue_full(app: gr.Blocks) -> None:
    """Replace Gradio's English 'Queue is full' text with our bilingual busy message."""
    queue = app._queue
    original_push = queue.push

    async def push(*args: Any, **kwargs: Any) -> Any:
        accepted, message, kind = await original_push(*args, **kwargs)
        if kind == "queue_full":
            message = BUSY_MESSAGE
        return accepted, message, kind

    queue.push = push  # type: ignore[method-assign]


def launch_options() -> dict[str, Any]:
    """Theme, CSS, translations and favicon for ``Blocks.launch``."""
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
    }
