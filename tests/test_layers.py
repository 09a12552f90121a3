"""The layers stay apart: the UI, the API and the chat layer never import torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ui_api_chat_and_settings_import_without_torch():
    code = (
        "import sys\n"
        "import jslm_chat.chat, jslm_chat.ui, jslm_chat.ui_handlers, jslm_chat.api, jslm_chat.settings\n"
        "import jslm_chat.ui_text, jslm_chat.export, jslm_chat.backend, jslm_chat.history, jslm_chat.server\n"
        "loaded = sorted(name for name in sys.modules if name.split('.')[0] in ('torch', 'transformers'))\n"
        "print(loaded)\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
