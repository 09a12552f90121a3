"""The demo model's cache: build once into a folder named after the build key, under a file lock."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from jslm_chat import file_lock
from jslm_chat.demo_model.build import build_demo_model
from jslm_chat.demo_model.recipe import build_key

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _default_cache_root() -> Path:
    env = os.environ.get("JSLM_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "jslm-chat"


def _is_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in MODEL_FILES)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing). Without locks (Windows) the atomic
    rename still keeps the cache consistent."""
    with open(path, "a+b") as handle, file_lock.exclusive(handle):
        yield


def _build_into(root: Path, target: Path) -> None:
    """Build in a temporary folder under ``root`` and rename it to ``target``."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=root))
    try:
        build_demo_model(staging)
        for path in (staging, *staging.iterdir()):  # mkdtemp and safetensors make them private
            path.chmod(0o755 if path.is_dir() else 0o644)
        try:
            os.rename(staging, target)
        except OSError:
            if not _is_complete(target):  # without a lock, another process may have won
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def demo_model_dir(cache_dir: Path | None = None) -> Path:
    """The folder of the built demo model, building it (20-25 s) on first use.

    ``cache_dir`` defaults to ``$JSLM_CACHE_DIR`` or ``~/.cache/jslm-chat``; the model lives in a
    subfolder named after a hash of the corpus and the build recipe, so edits rebuild it. The
    build goes to a temporary folder that is renamed into place, under a file lock, so several
    processes can ask at once and none ever sees a half-written model.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_root()
    target = root / f"demo-model-{build_key()}"
    if _is_complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root / f".{target.name}.lock"):
        if _is_complete(target):
            return target
        if target.exists():  # a damaged leftover: start again
            shutil.rmtree(target)
        if file_lock.AVAILABLE:  # under the lock, partial builds of this target are from killed processes
            for stale in root.glob(f".{target.name}.*.partial"):
                shutil.rmtree(stale, ignore_errors=True)
        _build_into(root, target)
    return target
