"""The layers stay apart, as folders: entry → web → chat → model ← backends.

``web/``, ``chat/`` and ``model/`` never import torch or transformers; ``web/`` never imports
``backends/``; ``chat/`` sees only ``model/``; ``model/`` imports nothing above it; ``backends/``
never imports the web, the chat service or the entry modules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jslm_chat"
HEAVY = ("torch", "transformers", "accelerate", "bitsandbytes")
ENTRY = ("jslm_chat.server", "jslm_chat.settings")
FORBIDDEN = {
    "web": (*HEAVY, "jslm_chat.backends", *ENTRY),
    "chat": (*HEAVY, "jslm_chat.web", "jslm_chat.backends", *ENTRY),
    "model": (*HEAVY, "jslm_chat.web", "jslm_chat.chat", "jslm_chat.backends", *ENTRY),
    "backends": ("jslm_chat.web", "jslm_chat.chat", *ENTRY),
}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports (absolute names; the package uses absolute imports only)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            names.add(node.module or "")
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_each_layer_imports_only_what_is_below_it(layer):
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files, layer
    broken = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in sorted(imported_modules(path))
        if any(within(name, forbidden) for forbidden in FORBIDDEN[layer])
    ]
    assert not broken, "\n".join(broken)


def test_the_rule_checker_sees_a_forbidden_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import torch\nfrom jslm_chat.backends.vllm import VllmBackend\n")
    assert {"torch", "jslm_chat.backends.vllm"} <= imported_modules(module)


def test_web_chat_model_and_entry_import_without_torch():
    modules = [
        f"jslm_chat.{path.relative_to(PACKAGE).with_suffix('').as_posix().replace('/', '.')}"
        for layer in ("web", "chat", "model")
        for path in sorted((PACKAGE / layer).glob("*.py"))
        if path.name != "__init__.py"
    ]
    code = (
        "import sys, importlib\n"
        f"for name in {[*modules, *ENTRY]!r}: importlib.import_module(name)\n"
        "loaded = sorted(name for name in sys.modules if name.split('.')[0] in ('torch', 'transformers'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_loader_and_the_flags_offer_the_same_dtypes():
    from jslm_chat.backends.inprocess.loading import DTYPES
    from jslm_chat.settings import DTYPE_CHOICES

    assert DTYPES == DTYPE_CHOICES
