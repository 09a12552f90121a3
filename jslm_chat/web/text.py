"""The text the UI shows: static labels for ``gr.I18n`` and the dynamic status lines.

Static labels are in Japanese (the default) and English; the browser's language picks the table. Dynamic
lines (header, status line, notices) come in the visitor's language (:func:`language_of`); errors carry both.

Keys are English identifiers prefixed ``jslm_`` (Gradio's own keys, such as ``chatbot``, are
namespaces that a plain key would clash with); the browser's language picks the table. Every table has every
key (a test checks), so no browser ever sees a raw key. Languages other than English get
Japanese.
"""

from __future__ import annotations

import html

from jslm_chat.model.backend import ReplyStream
from jslm_chat.web.saved import MAX_SAVED_CONVERSATIONS

JA: dict[str, str] = {
    "jslm_chat_placeholder": "ここに会話が表示されます。下の入力欄からどうぞ。",
    "jslm_message": "メッセージ",
    "jslm_message_placeholder": "メッセージを入力",
    "jslm_send": "送信",
    "jslm_stop": "停止",
    "jslm_retry": "再生成",
    "jslm_undo": "元に戻す",
    "jslm_clear": "クリア",
    "jslm_settings": "詳細設定",
    "jslm_system_prompt": "システムプロンプト",
    "jslm_system_prompt_info": "アシスタントの役割や口調の指示です。",
    "jslm_max_new_tokens": "最大生成トークン数",
    "jslm_temperature": "温度 (temperature)",
    "jslm_temperature_info": "0 で毎回同じ返答（貪欲法）、大きいほど多様に。",
    "jslm_top_p": "top_p",
    "jslm_top_p_info": "累積確率がこの値に達するまでの候補から選びます。",
    "jslm_top_k": "top_k",
    "jslm_top_k_info": "確率の高い上位 k 個の候補から選びます（0 で無効）。",
    "jslm_repetition_penalty": "繰り返しペナルティ",
    "jslm_repetition_penalty_info": "大きいほど同じ言い回しを避けます。",
    "jslm_seed": "シード",
    "jslm_seed_info": ("空欄でランダム（使ったシードは状態表示に出ます）。同じシードと設定で同じ返答を再現できます。"),
    "jslm_seed_placeholder": "ランダム",
    "jslm_reset": "設定を初期値に戻す",
    "jslm_continue": "続きを生成",
    "jslm_feedback_comment": "評価へのコメント（任意）",
    "jslm_export_json": "JSON で保存",
    "jslm_export_markdown": "Markdown で保存",
    "jslm_new_chat": "新しい会話",
    "jslm_conversations": "会話の履歴",
    "jslm_title": "タイトル",
    "jslm_rename": "名前を変更",
    "jslm_delete": "削除",
    "jslm_no_conversations": "まだ会話はありません。メッセージを送ると、ここに自動で保存されます。",
    "jslm_today": "今日",
    "jslm_yesterday": "昨日",
    "jslm_week": "過去 7 日間",
    "jslm_older": "それ以前",
    "jslm_delete_confirm": "この会話を削除しますか？元に戻せません。",
    "jslm_delete_yes": "削除する",
    "jslm_cancel": "キャンセル",
    "jslm_saved_note": (
        f"会話はこのブラウザの中にだけ保存されます（新しい順に {MAX_SAVED_CONVERSATIONS} 件まで）。"
        "サーバーには残りません。"
    ),
    "jslm_saved_note_votes": (
        f"会話はこのブラウザの中に保存されます（新しい順に {MAX_SAVED_CONVERSATIONS} 件まで）。"
        "ただし 👍/👎 を押すと、その返答までの会話・設定・コメントがサーバーの評価ログに送られます。"
    ),
    "jslm_vote_note": "👍/👎 を押すと、その返答までの会話・設定・このコメントがサーバーの評価ログに送られます。",
    "jslm_disclaimer": "AI の返答は間違っていることがあります。大事な内容は確かめてください。",
    "jslm_disclaimer_votes": (
        "AI の返答は間違っていることがあります。👍/👎 を押すと、その会話がサーバーの評価ログに送られます。"
    ),
    "jslm_previous_version": "前の版",
    "jslm_next_version": "次の版",
    "jslm_version": "版",
    "jslm_demo_banner": (
        "これは動作確認用の小さなデモモデル（数 MB、オフラインで学習）です。"
        "返答の内容に意味はありません。本物のモデルは --demo なしで起動してください。"
    ),
}

EN: dict[str, str] = {
    "jslm_chat_placeholder": "Your conversation appears here. Type below to start.",
    "jslm_message": "Message",
    "jslm_message_placeholder": "Type a message",
    "jslm_send": "Send",
    "jslm_stop": "Stop",
    "jslm_retry": "Retry",
    "jslm_undo": "Undo",
    "jslm_clear": "Clear",
    "jslm_settings": "Advanced settings",
    "jslm_system_prompt": "System prompt",
    "jslm_system_prompt_info": "Instructions for the assistant's role and tone.",
    "jslm_max_new_tokens": "Max new tokens",
    "jslm_temperature": "Temperature",
    "jslm_temperature_info": "0 gives the same reply every time (greedy); higher is more varied.",
    "jslm_top_p": "top_p",
    "jslm_top_p_info": "Sample from the smallest set of tokens whose probability adds up to this.",
    "jslm_top_k": "top_k",
    "jslm_top_k_info": "Sample from the k most likely tokens (0 turns it off).",
    "jslm_repetition_penalty": "Repetition penalty",
    "jslm_repetition_penalty_info": "Higher values avoid repeating the same phrases.",
    "jslm_seed": "Seed",
    "jslm_seed_info": (
        "Empty for random (the seed used shows in the status line). The same seed and settings reproduce a reply."
    ),
    "jslm_seed_placeholder": "random",
    "jslm_reset": "Reset settings",
    "jslm_continue": "Continue",
    "jslm_feedback_comment": "Comment on your rating (optional)",
    "jslm_export_json": "Save as JSON",
    "jslm_export_markdown": "Save as Markdown",
    "jslm_new_chat": "New chat",
    "jslm_conversations": "Conversations",
    "jslm_title": "Title",
    "jslm_rename": "Rename",
    "jslm_delete": "Delete",
    "jslm_no_conversations": "No conversations yet. Send a message and it is saved here automatically.",
    "jslm_today": "Today",
    "jslm_yesterday": "Yesterday",
    "jslm_week": "Previous 7 days",
    "jslm_older": "Older",
    "jslm_delete_confirm": "Delete this conversation? This cannot be undone.",
    "jslm_delete_yes": "Delete",
    "jslm_cancel": "Cancel",
    "jslm_saved_note": (
        f"Conversations are saved in this browser only (the {MAX_SAVED_CONVERSATIONS} newest), never on the server."
    ),
    "jslm_saved_note_votes": (
        f"Conversations are saved in this browser (the {MAX_SAVED_CONVERSATIONS} newest). A 👍/👎 sends the"
        " conversation up to that reply, the settings and the comment to the server's feedback log."
    ),
    "jslm_vote_note": (
        "A 👍/👎 sends the conversation up to that reply, the settings and this comment to the server's feedback log."
    ),
    "jslm_disclaimer": "AI replies can be wrong. Check what matters.",
    "jslm_disclaimer_votes": "AI replies can be wrong. A 👍/👎 sends the conversation to the server's feedback log.",
    "jslm_previous_version": "Previous version",
    "jslm_next_version": "Next version",
    "jslm_version": "Version",
    "jslm_demo_banner": (
        "This is a tiny demo model (a few MB, trained offline) for trying the app: its replies mean "
        "nothing. Start without --demo to serve the real model."
    ),
}

VERSION_TEXT_KEYS = ("jslm_previous_version", "jslm_next_version", "jslm_version")
"""The labels of the versions switcher, which the browser draws itself (``assets/app.js``)."""

# Browser languages that get Japanese besides "ja": everything we do not translate.
OTHER_LANGUAGES = ("zh", "ko", "fr", "de", "es", "pt", "it", "ru")

TRANSLATIONS: dict[str, dict[str, str]] = {
    "ja": JA,
    "en": EN,
    **dict.fromkeys(OTHER_LANGUAGES, JA),
}


def language_of(accept_language: str | None) -> str:
    """The visitor's language from an ``Accept-Language`` header, as Gradio's labels pick theirs: "ja" for a
    browser whose first language gets the Japanese table (or that names none), else "en"."""
    first = (accept_language or "").split(",")[0].split(";")[0].strip().lower()
    primary = first.split("-")[0]
    return "ja" if not primary or TRANSLATIONS.get(primary) is JA else "en"


LINE_PARTS = {
    "ja": {
        "context": "コンテキスト {used:,} / {total:,} トークン",
        "cached": "再利用 {count:,} トークン",
        "speed": "{speed:.1f} トークン/秒",
        "dropped": "省略したターン {count}",
        "seed": "シード {seed}",
    },
    "en": {
        "context": "context {used:,} / {total:,} tokens",
        "cached": "{count:,} cached",
        "speed": "{speed:.1f} tok/s",
        "dropped": "{count} turn(s) left out",
        "seed": "seed {seed}",
    },
}
FINISH_NOTES = {
    "ja": {
        "": "生成中…",
        "eos": "完了",
        "stopped": "停止しました",
        "length": "完了: 最大生成トークン数 (max_new_tokens) に達しました",
    },
    "en": {"": "Generating…", "eos": "Done", "stopped": "Reply stopped", "length": "Done: hit max_new_tokens"},
}
STARTING = {"ja": "準備中…", "en": "Starting…"}


def status_line(reply: ReplyStream, context_length: int, finish_reason: str | None = None, language: str = "ja") -> str:
    """The line under the chat: progress or why it ended, context used, cache reuse, speed, turns left out, seed
    (a figure that is zero or unknown is left out)."""
    parts = LINE_PARTS[language]
    notes = FINISH_NOTES[language]
    line = [
        notes.get(finish_reason or reply.finish_reason or "", notes[""]),
        parts["context"].format(used=reply.prompt.num_tokens + reply.new_tokens, total=context_length),
    ]
    if reply.reused_tokens:
        line.append(parts["cached"].format(count=reply.reused_tokens))
    if reply.tokens_per_second:
        line.append(parts["speed"].format(speed=reply.tokens_per_second))
    if reply.prompt.dropped_turns:
        line.append(parts["dropped"].format(count=reply.prompt.dropped_turns))
    line.append(parts["seed"].format(seed=reply.seed))
    return " · ".join(line)


NOTHING_TO_SEND = "送信するメッセージがありません / Nothing to send"
NOTHING_TO_RETRY = "再生成する返答がありません / Nothing to retry"
NOTHING_TO_CONTINUE = "続きを生成する返答がありません / Nothing to continue"
VOTE_RECORDED = {
    "ja": "評価を送りました。ありがとうございます（会話はサーバーの評価ログに記録されました）。",
    "en": "Thank you: your rating and the conversation were sent to the server's feedback log.",
}


def waiting_line(ahead: int, language: str = "ja") -> str:
    """The status line while a request waits for a generation slot."""
    if language == "en":
        return f"Waiting in line: {ahead} ahead of you…"
    return f"順番待ちです。前に {ahead} 件あります…"


HEADER_TEXT = {
    "ja": ("日本語 StableLM チャット", "モデル", "実行環境", "コンテキスト"),
    "en": ("Japanese StableLM Chat", "Model", "Runs on", "Context"),
}


def header_html(
    model: str, runs_on: str, context_length: int, logo_svg: str, demo_mode: bool, language: str = "ja"
) -> str:
    """The header: logo, title, model, where it runs (device and dtype, or the vLLM server), context."""
    title, model_label, runs_on_label, context_label = HEADER_TEXT[language]
    badge = ' <span class="jslm-demo-badge">DEMO</span>' if demo_mode else ""
    return (
        '<div class="jslm-header">'
        f'<span class="jslm-logo" aria-hidden="true">{logo_svg}</span>'
        "<div>"
        f"<h1>{title}{badge}</h1>"
        f'<p class="jslm-model">{model_label}: <b>{html.escape(model)}</b> · '
        f"{runs_on_label}: <b>{html.escape(runs_on)}</b> · "
        f"{context_label}: <b>{context_length:,}</b></p>"
        "</div></div>"
    )


def dropped_notice(dropped: int) -> str:
    """What the user is told when old turns no longer fit the context window."""
    return (
        f"古いやり取り {dropped} ターン分がコンテキストに入りきらないため、モデルには送っていません。"
        f" / {dropped} old turn(s) no longer fit the context window and were left out."
    )


def dropped_saved_notice(dropped: int) -> str:
    """What the user is told when conversations saved in the browser held unreadable data."""
    return (
        f"このブラウザに保存された会話のうち、読み取れないデータ {dropped} 件を破棄しました。"
        f" / {dropped} unreadable item(s) in the conversations saved in this browser were dropped."
    )
