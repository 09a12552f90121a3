"""Static UI text in Japanese (the default) and English, for ``gr.I18n``.

Keys are English identifiers; the browser's language picks the table. Every table has every
key (a test checks), so no browser ever sees a raw key. Languages other than English get
Japanese.
"""

from __future__ import annotations

JA: dict[str, str] = {
    "title": "日本語 StableLM チャット",
    "subtitle": "Japanese StableLM Instruct とブラウザで会話できます。",
    "chatbot": "会話",
    "chat_placeholder": "ここに会話が表示されます。下の入力欄からどうぞ。",
    "message": "メッセージ",
    "message_placeholder": "メッセージを入力（Enter で送信、Shift+Enter で改行）",
    "send": "送信",
    "stop": "停止",
    "retry": "再生成",
    "undo": "元に戻す",
    "clear": "クリア",
    "settings": "詳細設定",
    "system_prompt": "システムプロンプト",
    "system_prompt_info": "アシスタントの役割や口調の指示です。",
    "max_new_tokens": "最大生成トークン数",
    "temperature": "温度 (temperature)",
    "temperature_info": "0 で毎回同じ返答（貪欲法）、大きいほど多様に。",
    "top_p": "top_p",
    "top_p_info": "累積確率がこの値に達するまでの候補から選びます。",
    "top_k": "top_k",
    "top_k_info": "確率の高い上位 k 個の候補から選びます（0 で無効）。",
    "repetition_penalty": "繰り返しペナルティ",
    "repetition_penalty_info": "大きいほど同じ言い回しを避けます。",
    "seed": "シード",
    "seed_info": "空欄でランダム。同じシードと設定で同じ返答を再現できます。",
    "reset": "設定を初期値に戻す",
    "examples": "例",
    "export": "会話を保存",
    "export_json": "JSON で保存",
    "export_markdown": "Markdown で保存",
    "demo_banner": (
        "これは動作確認用の小さなデモモデル（数 MB、オフラインで学習）です。"
        "返答の内容に意味はありません。本物のモデルは --demo なしで起動してください。"
    ),
}

EN: dict[str, str] = {
    "title": "Japanese StableLM Chat",
    "subtitle": "Chat with Japanese StableLM Instruct in your browser.",
    "chatbot": "Conversation",
    "chat_placeholder": "Your conversation appears here. Type below to start.",
    "message": "Message",
    "message_placeholder": "Type a message (Enter to send, Shift+Enter for a new line)",
    "send": "Send",
    "stop": "Stop",
    "retry": "Retry",
    "undo": "Undo",
    "clear": "Clear",
    "settings": "Advanced settings",
    "system_prompt": "System prompt",
    "system_prompt_info": "Instructions for the assistant's role and tone.",
    "max_new_tokens": "Max new tokens",
    "temperature": "Temperature",
    "temperature_info": "0 gives the same reply every time (greedy); higher is more varied.",
    "top_p": "top_p",
    "top_p_info": "Sample from the smallest set of tokens whose probability adds up to this.",
    "top_k": "top_k",
    "top_k_info": "Sample from the k most likely tokens (0 turns it off).",
    "repetition_penalty": "Repetition penalty",
    "repetition_penalty_info": "Higher values avoid repeating the same phrases.",
    "seed": "Seed",
    "seed_info": "Empty for random. The same seed and settings reproduce a reply.",
    "reset": "Reset settings",
    "examples": "Examples",
    "export": "Save the conversation",
    "export_json": "Save as JSON",
    "export_markdown": "Save as Markdown",
    "demo_banner": (
        "This is a tiny demo model (a few MB, trained offline) for trying the app: its replies mean "
        "nothing. Start without --demo to serve the real model."
    ),
}

# Browser languages that get Japanese besides "ja": everything we do not translate.
OTHER_LANGUAGES = ("zh", "ko", "fr", "de", "es", "pt", "it", "ru")

TRANSLATIONS: dict[str, dict[str, str]] = {
    "ja": JA,
    "en": EN,
    **dict.fromkeys(OTHER_LANGUAGES, JA),
}
