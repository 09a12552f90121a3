"""Gradio Blocks layout and event wiring. What each event does lives in ``chat_events`` and ``saved_events``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from jslm_chat.chat.service import ChatService
from jslm_chat.model.params import SHOWN_SETTINGS, Setting
from jslm_chat.web import gradio_overheads
from jslm_chat.web.api import register_api
from jslm_chat.web.chat_events import ChatHandlers
from jslm_chat.web.event_common import language
from jslm_chat.web.feedback import FeedbackLog
from jslm_chat.web.saved import DATE_GROUPS, empty_store
from jslm_chat.web.saved_events import ConversationHandlers
from jslm_chat.web.text import TRANSLATIONS, VERSION_TEXT_KEYS, header_html
from jslm_chat.web.versions import no_versions

ASSETS = Path(__file__).resolve().parents[2] / "assets"
LATEX_DELIMITERS = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "\\[", "right": "\\]", "display": True},
    {"left": "\\(", "right": "\\)", "display": False},
    {"left": "$", "right": "$", "display": False},
]
HTML_SHOWN_AS_TEXT = (
    *("script", "style", "iframe", "frame", "frameset", "object", "embed", "applet", "portal", "noscript"),
    *("noembed", "noframes", "template", "slot", "base", "link", "meta", "head", "body", "html", "title"),
    *("form", "textarea", "select", "option", "optgroup", "label", "fieldset", "legend", "datalist", "output"),
    *("img", "image", "picture", "video", "audio", "source", "track", "canvas", "map", "area", "math", "param"),
    *("dialog", "details", "summary", "marquee", "blink", "font", "center", "xmp", "plaintext", "listing"),
    *("b", "i", "u", "s", "sub", "sup", "small", "big", "mark", "abbr", "cite", "q", "kbd", "samp", "var"),
    *("time", "ins", "dfn", "bdi", "bdo", "ruby", "rt", "rp", "wbr", "nav", "header", "footer", "main"),
    *("section", "article", "aside", "address", "figure", "figcaption", "hgroup", "menu", "dl", "dt", "dd"),
    *("caption", "col", "colgroup", "tfoot", "meter", "progress", "search", "strike", "tt", "nobr"),
)
"""HTML tags in a message that the chat shows as text (Gradio's ``allow_tags`` escapes these in the rendered
message). Every tag that Markdown rendering itself never produces is listed, and ``img`` too (a Markdown image
then shows as its HTML). The few tags Markdown does produce (p, a, div, span, code, table...) stay HTML,
cleaned by Gradio's sanitizer: nothing in a message ever runs."""
DOWNLOAD_JS = """(text, title, extension) => {
  const now = new Date();
  const day = [now.getFullYear(), now.getMonth() + 1, now.getDate()].map((n) => String(n).padStart(2, "0"));
  const base = (title || "").replace(/[\\/:*?"<>|\u0000-\u001f]+/g, "_").trim().slice(0, 60) || "conversation";
  const name = `${base}-${day.join("-")}.${extension}`;
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], {type: "text/plain;charset=utf-8"}));
  link.download = name;
  document.body.appendChild(link);
  link.click();
  setTimeout(() => { URL.revokeObjectURL(link.href); link.remove(); }, 1000);
}"""

WITH_UTC_OFFSET_JS = "(store) => Object.assign({}, store, {utc_offset: -new Date().getTimezoneOffset()})"
"""The stored value with the browser's time zone (minutes east of UTC), for the side panel's date groups."""
CHOOSE_VERSION_JS = "(choice, ...rest) => [window.jslmVersionChoice || '', ...rest]"
"""The switcher's click (``assets/app.js``) leaves "position:version" here for the hidden switch button."""
CHAT_HEIGHT = "clamp(240px, calc(100dvh - 360px), 620px)"
"""The chat fills the screen above the message box, a phone's included (the box is visible without scrolling)."""
INPUT_RESERVE_TOKENS = 256
"""Context tokens the max_new_tokens slider always leaves for the system prompt and the message."""

STORAGE_KEY = "jslm-chat-conversations"
STORAGE_SECRET = "jslm-chat"  # Gradio encrypts the stored value with this key. The key is
# sent to the browser anyway (it is no secret); a fixed one keeps saved conversations readable after a
# server restart, which Gradio's default (a random key per start) would lose.

i18n = gr.I18n(**TRANSLATIONS)
VERSION_TEXT = {language: {key: TRANSLATIONS[language][key] for key in VERSION_TEXT_KEYS} for language in ("ja", "en")}
"""The switcher's labels for ``assets/app.js`` (drawn in the browser, where ``gr.I18n`` does not reach)."""


def load_examples(lang: str = "ja") -> list[str]:
    """Example prompts in ``lang``: blocks of ``assets/examples_<lang>.txt`` separated by two blank lines."""
    text = (ASSETS / f"examples_{lang}.txt").read_text(encoding="utf-8")
    return [block.strip() for block in text.split("\n\n\n") if block.strip()]


def suggestion_cards(lang: str) -> list[dict[str, str]]:
    """The empty chat's suggestion cards (``gr.Chatbot`` examples, shown on one paragraph): a click sends one."""
    return [{"text": text, "display_text": " ".join(text.split())} for text in load_examples(lang)]


def offered_max_new_tokens(service: ChatService) -> int:
    """The largest max_new_tokens the UI offers: one that still leaves room for a message."""
    room = service.backend.context_length - INPUT_RESERVE_TOKENS
    return max(1, min(service.max_new_tokens_limit, room))


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


@dataclass
class Widgets:
    """The components that events read and update, and the lists of them that events share."""

    chatbot: gr.Chatbot
    textbox: gr.Textbox
    send: gr.Button
    stop: gr.Button
    status: gr.Markdown
    generating: gr.State
    pending: gr.State
    versions: gr.State
    controls: list[Any]
    buttons: dict[str, gr.Button]
    store: gr.BrowserState
    current: gr.State
    side: dict[str, Any]
    """The side panel's parts: ``lists`` (one radio per date group), ``title``, ``manage`` (rename and delete),
    ``confirm`` (the delete confirmation), ``empty`` (the empty-state note)."""
    switchers: gr.Textbox

    @property
    def sending(self) -> list[Any]:
        """The sending state: the flag, Send, and Stop in Send's place."""
        return [self.generating, self.send, self.stop]

    @property
    def title(self) -> gr.Textbox:
        """The open conversation's title box."""
        return self.side["title"]

    @property
    def panel(self) -> list[Any]:
        """What every side-panel event and save updates (:func:`~jslm_chat.web.saved_events.panel`)."""
        side = self.side
        parts = [side["title"], side["manage"], side["confirm"], side["empty"]]
        return [self.store, self.current, *side["lists"], *parts, self.switchers]

    @property
    def emptied(self) -> list[Any]:
        """What starting an empty conversation resets: chat, status, Continue, the sending state."""
        return [self.chatbot, self.versions, self.status, self.buttons["continue"], *self.sending]

    @property
    def saved(self) -> list[Any]:
        """What saving the open conversation reads: stored value, its id, the chat, its versions, its settings."""
        return [self.store, self.current, self.chatbot, self.versions, *self.controls]


def _chatbot(votes: bool) -> gr.Chatbot:
    """The chat: bubbles, the user's messages editable, 👍/👎 only where votes are recorded."""
    return gr.Chatbot(
        label="会話 / Chat",
        show_label=False,
        elem_id="jslm-chatbot",
        height=CHAT_HEIGHT,
        buttons=["copy", "copy_all"],
        placeholder=i18n("jslm_chat_placeholder"),
        examples=None,  # the suggestion cards, in the visitor's language, come with the page load
        layout="bubble",
        editable="user",
        latex_delimiters=LATEX_DELIMITERS,
        allow_tags=list(HTML_SHOWN_AS_TEXT),
        feedback_options=("Like", "Dislike") if votes else None,
    )


def _input_row() -> tuple[gr.Textbox, gr.Button, gr.Button]:
    """The message box with Send, and Stop in Send's place while a reply streams."""
    with gr.Row(equal_height=True, elem_id="jslm-input-row"):
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
        stop = gr.Button(i18n("jslm_stop"), variant="stop", scale=1, min_width=90, visible=False, elem_id="jslm-stop")
    return textbox, send, stop


def build_ui(service: ChatService, *, demo_mode: bool = False, feedback: FeedbackLog | None = None) -> gr.Blocks:
    """The chat app: side panel of saved conversations, chat, settings, examples, status line, export,
    votes, and the ``/chat``, ``/prompt`` API."""
    handlers = ChatHandlers(service, feedback)
    backend = service.backend
    votes = feedback is not None
    with gr.Blocks(title="日本語 StableLM チャット / Japanese StableLM Chat") as app:
        store = gr.BrowserState(empty_store(), storage_key=STORAGE_KEY, secret=STORAGE_SECRET)
        current = gr.State(None)
        side, side_buttons = _sidebar(votes)
        logo = (ASSETS / "logo.svg").read_text(encoding="utf-8")

        def header(lang: str) -> str:
            return header_html(
                backend.preset.display_name, backend.runs_on, backend.context_length, logo, demo_mode, lang
            )

        def localized(request: gr.Request) -> tuple[Any, ...]:
            """The header and the empty chat's suggestion cards in the visitor's language."""
            lang = language(request)
            return header(lang), gr.Chatbot(examples=suggestion_cards(lang))

        heading = gr.HTML(header("ja"), elem_id="jslm-header")
        if demo_mode:
            gr.Markdown(i18n("jslm_demo_banner"), elem_id="jslm-demo-banner", elem_classes=["jslm-banner"])
        chatbot = _chatbot(votes)
        textbox, send, stop = _input_row()
        gr.Markdown(i18n("jslm_disclaimer_votes" if votes else "jslm_disclaimer"), elem_id="jslm-disclaimer")
        with gr.Row(elem_id="jslm-actions"):  # one row, phones included
            buttons = {
                name: gr.Button(i18n("jslm_" + name), size="sm", min_width=64, elem_id="jslm-" + name)
                for name in ACTIONS
            }
        buttons["continue"] = gr.Button(i18n("jslm_continue"), visible=False, size="sm", elem_id="jslm-continue")
        status = gr.Markdown("", elem_id="jslm-status")
        comment = gr.Textbox(
            label=i18n("jslm_feedback_comment"),
            info=i18n("jslm_vote_note"),
            visible=votes,
            max_length=2000,
            elem_id="jslm-comment",
        )
        with gr.Accordion(i18n("jslm_settings"), open=False, elem_id="jslm-settings"):
            defaults = backend.preset.default_settings()
            offered = offered_max_new_tokens(service)
            controls = [setting_control(spec, defaults[spec.name], offered) for spec in SHOWN_SETTINGS]
            buttons["reset"] = gr.Button(i18n("jslm_reset"), size="sm")
        with gr.Row(elem_id="jslm-exports"):
            export_json = gr.Button(i18n("jslm_export_json"), size="sm", elem_id="jslm-export-json")
            export_markdown = gr.Button(i18n("jslm_export_markdown"), size="sm", elem_id="jslm-export-md")
            exported = gr.Textbox(visible="hidden", elem_id="jslm-exported")
        buttons.update(side_buttons)
        generating, todo, versions = gr.State(False), gr.State(None), gr.State(no_versions())
        widgets = Widgets(
            chatbot,
            *(textbox, send, stop, status, generating, todo, versions),
            *(controls, buttons, store, current, side),
            gr.Textbox("[]", visible="hidden", elem_id="jslm-versions"),
        )
        conversations = ConversationHandlers(service, len(widgets.controls), len(widgets.emptied))
        app.load(localized, None, [heading, chatbot], **INSTANT)
        reply_events = _wire(handlers, conversations, widgets)
        _wire_versions(handlers, conversations, widgets)
        _wire_conversations(app, conversations, widgets, reply_events)
        _wire_extras(handlers, widgets, comment, (export_json, export_markdown, exported))
        register_api(service)
    return app


ACTIONS = ("retry", "undo", "clear")


def _sidebar(votes: bool) -> tuple[dict[str, Any], dict[str, gr.Button]]:
    """The side panel: new chat, this browser's conversations by date, rename and delete (with a confirmation).

    Returns the parts events update (see :attr:`Widgets.side`) and the buttons.
    """
    with gr.Sidebar(label=i18n("jslm_conversations"), elem_id="jslm-sidebar", width=280):
        new_chat = gr.Button(i18n("jslm_new_chat"), variant="primary", elem_id="jslm-new-chat")
        empty = gr.Markdown(i18n("jslm_no_conversations"), elem_id="jslm-no-conversations")
        lists = [
            gr.Radio(
                [],
                value=None,
                label=i18n("jslm_" + group),
                visible=False,
                container=False,
                elem_id="jslm-conversations-" + group,
                elem_classes=["jslm-conversations"],
            )
            for group in DATE_GROUPS
        ]
        with gr.Column(visible=False, elem_id="jslm-manage") as manage:
            title = gr.Textbox(label=i18n("jslm_title"), max_length=200, elem_id="jslm-title")
            with gr.Row():
                rename = gr.Button(i18n("jslm_rename"), size="sm", min_width=64, elem_id="jslm-rename")
                delete = gr.Button(i18n("jslm_delete"), size="sm", min_width=64, elem_id="jslm-delete")
            with gr.Column(visible=False, elem_id="jslm-delete-confirm") as confirm:
                gr.Markdown(i18n("jslm_delete_confirm"))
                with gr.Row():
                    cancel = gr.Button(i18n("jslm_cancel"), size="sm", min_width=64, elem_id="jslm-delete-cancel")
                    delete_yes = gr.Button(
                        i18n("jslm_delete_yes"), size="sm", min_width=64, variant="stop", elem_id="jslm-delete-yes"
                    )
        gr.Markdown(i18n("jslm_saved_note_votes" if votes else "jslm_saved_note"), elem_id="jslm-saved-note")
    side = {"lists": lists, "title": title, "manage": manage, "confirm": confirm, "empty": empty}
    buttons = {"new_chat": new_chat, "rename": rename, "delete": delete, "cancel": cancel, "delete_yes": delete_yes}
    return side, buttons


INSTANT: dict[str, Any] = {"queue": False, "api_visibility": "private"}


def _wire(handlers: ChatHandlers, conversations: ConversationHandlers, w: Widgets) -> list[Any]:
    """Send, stream, Stop, Retry, Continue, edit, Undo and Reset; every change is saved in the browser.

    Returns the reply events (which Clear, Undo, edit and the side panel cancel).
    """
    streamed = [w.chatbot, w.textbox, w.status, w.buttons["continue"], w.versions]
    saving = (w.saved, w.panel)

    def then(event: Any, reply: Any) -> Any:
        """Save, then answer what ``event`` left pending; when done (or refused), allow sending and save."""
        reply_event = event.then(conversations.save, *saving, **INSTANT).then(
            reply,
            [w.chatbot, w.versions, w.pending, *w.controls],
            streamed,
            concurrency_limit=None,  # ChatService's admission decides who generates when
            api_visibility="private",
            show_progress="minimal",
        )
        reply_event.then(handlers.finish, None, w.sending, **INSTANT).then(conversations.save, *saving, **INSTANT)
        return reply_event

    submitted = (
        [w.textbox, w.chatbot, w.versions, w.generating],
        [w.textbox, w.chatbot, *w.sending, w.pending],
    )
    retried = ([w.chatbot, w.versions, w.generating], [w.chatbot, w.versions, *w.sending, w.pending])
    continued = ([w.chatbot, w.versions, w.generating], [*w.sending, w.pending])
    reply_events = [
        then(w.textbox.submit(handlers.submit, *submitted, **INSTANT), handlers.respond),
        then(w.send.click(handlers.submit, *submitted, **INSTANT), handlers.respond),
        then(w.buttons["retry"].click(handlers.retry, *retried, **INSTANT), handlers.respond),
        then(w.buttons["continue"].click(handlers.start_continue, *continued, **INSTANT), handlers.continue_reply),
        then(
            w.chatbot.example_select(handlers.submit_example, submitted[0][1:], submitted[1], **INSTANT),
            handlers.respond,
        ),
    ]
    w.chatbot.edit(None, None, None, cancels=list(reply_events), **INSTANT)  # the edited reply's updates stop
    edited = w.chatbot.edit(  # queued: the warning for a refused edit reaches the page only from the queue
        handlers.edit, [w.chatbot, w.versions], [w.chatbot, w.versions, *w.sending, w.pending], api_visibility="private"
    )
    reply_events.append(then(edited, handlers.respond))
    w.stop.click(handlers.stop, None, None, **INSTANT)
    undone = w.buttons["undo"].click(
        handlers.undo,
        [w.chatbot, w.versions],
        [w.chatbot, w.versions, w.textbox, w.status],
        cancels=reply_events,
        **INSTANT,
    )
    undone.then(handlers.finish, None, w.sending, **INSTANT).then(conversations.save, *saving, **INSTANT)
    w.buttons["reset"].click(handlers.default_settings, None, w.controls, **INSTANT)
    return reply_events


def _wire_conversations(
    app: gr.Blocks, conversations: ConversationHandlers, w: Widgets, reply_events: list[Any]
) -> None:
    """The side panel: restore on load, new chat (also Clear), switch, rename, delete; settings saved on change."""
    app.load(
        conversations.load,
        [w.store],
        [*w.panel, w.chatbot, w.versions, *w.controls],
        js=WITH_UTC_OFFSET_JS,
        api_visibility="private",
    ).then(
        None, js="() => { document.body.dataset.jslmRestored = 'true'; }", **INSTANT
    )  # a mark that the page's own state is in place (the browser tests wait for it)
    for starting in (w.buttons["new_chat"].click, w.buttons["clear"].click, w.chatbot.clear):
        starting(conversations.new_chat, w.saved, [*w.panel, *w.emptied], cancels=reply_events, **INSTANT)
    for listing in w.side["lists"]:
        listing.input(
            conversations.open,
            [listing, *w.saved],
            [*w.panel, *w.emptied, *w.controls],
            cancels=reply_events,
            **INSTANT,
        )
    for renaming in (w.buttons["rename"].click, w.title.submit):
        renaming(conversations.rename, [w.store, w.current, w.title], w.panel, **INSTANT)
    for button, shown in ((w.buttons["delete"], True), (w.buttons["cancel"], False)):  # Delete asks first
        button.click(lambda shown=shown: gr.Column(visible=shown), None, w.side["confirm"], **INSTANT)
    w.buttons["delete_yes"].click(
        conversations.delete, [w.store, w.current], [*w.panel, *w.emptied], cancels=reply_events, **INSTANT
    )
    changed = [control.release if isinstance(control, gr.Slider) else control.blur for control in w.controls]
    gr.on(changed, conversations.save, w.saved, w.panel, **INSTANT)


def _wire_versions(handlers: ChatHandlers, conversations: ConversationHandlers, w: Widgets) -> None:
    """The versions switcher: ``assets/app.js`` draws ◀ 2/3 ▶ under each message with versions (listed in the
    hidden ``switchers`` box by every save) and presses a hidden button with the chosen version; the chat
    continues from the one shown."""
    choice = gr.Textbox(visible="hidden", elem_id="jslm-version-choice")
    switch = gr.Button(visible="hidden", elem_id="jslm-version-switch")
    switch.click(
        handlers.switch_version,
        [choice, w.chatbot, w.versions, w.generating],
        [w.chatbot, w.versions, w.status, w.buttons["continue"]],
        js=CHOOSE_VERSION_JS,
        **INSTANT,
    ).then(conversations.save, w.saved, w.panel, **INSTANT)


def _wire_extras(
    handlers: ChatHandlers, w: Widgets, comment: gr.Textbox, exports: tuple[gr.Button, gr.Button, gr.Textbox]
) -> None:
    """Downloads (made in the browser from text: no file is written on the server) and votes."""
    export_json, export_markdown, exported = exports
    for button, make, extension in (
        (export_json, handlers.export_json, "json"),
        (export_markdown, handlers.export_markdown, "md"),
    ):
        button.click(make, [w.chatbot, w.versions, *w.controls], exported, **INSTANT).success(
            None,
            [exported, w.title],
            None,
            js=f"(text, title) => ({DOWNLOAD_JS})(text, title, {extension!r})",
            **INSTANT,
        )
    if handlers.feedback is not None:
        # queued: the vote's confirmation (or refusal) reaches the page only from the queue
        w.chatbot.like(handlers.vote, [w.chatbot, comment, *w.controls], comment, api_visibility="private")


GRADIO_QUEUE_SIZE = 1024  # events waiting for a worker thread; replies wait in ChatService's own line


def configure_queue(app: gr.Blocks) -> gr.Blocks:
    """Gradio's queue (needed for streaming); ChatService's admission bounds generation.

    The size is explicit: on ZeroGPU, Gradio turns ``max_size=None`` into 1.
    """
    return gradio_overheads.trim(app.queue(default_concurrency_limit=None, max_size=GRADIO_QUEUE_SIZE))


def launch_options() -> dict[str, Any]:
    """Theme, CSS, script, translations and favicon for ``Blocks.launch``.

    Gradio's default 40 worker threads are enough: replies (UI and API) are async and wait or stream in
    the relay's own thread, so only quick events and ``/prompt`` take a worker.
    """
    return {
        "theme": gr.themes.Soft(
            primary_hue="indigo",
            font=["Hiragino Sans", "Noto Sans JP", "Yu Gothic UI", "Meiryo", "system-ui", "sans-serif"],
            font_mono=["Noto Sans Mono CJK JP", "ui-monospace", "monospace"],
        ).set(  # text contrast of at least 4.5:1 (the theme's lighter indigo gives 3.6 to 4.5)
            button_primary_background_fill="*primary_600",
            button_primary_background_fill_hover="*primary_700",
            block_title_text_color="*primary_700",
            block_label_text_color="*primary_700",
        ),
        "css_paths": [ASSETS / "style.css"],
        "js": (ASSETS / "app.js").read_text(encoding="utf-8").replace("JSLM_VERSION_TEXT", json.dumps(VERSION_TEXT)),
        "i18n": i18n,
        "favicon_path": str(ASSETS / "favicon.svg"),
    }
