"""App settings from command-line flags and ``JSLM_*`` environment variables (flags win)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .presets import DEFAULT_PRESET_KEY, PRESETS

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
DTYPE_CHOICES = ("auto", "float16", "bfloat16", "float32")
BACKEND_CHOICES = ("transformers", "vllm")
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    """Everything ``app.py`` needs to load the model and serve the UI."""

    model: str = DEFAULT_PRESET_KEY
    demo: bool = False
    device: str = "auto"
    dtype: str = "auto"
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    backend: str = "transformers"
    vllm_url: str = "http://127.0.0.1:8000"
    concurrency: int | None = None  # None: the backend's default (1 in-process, 64 with vLLM)
    queue_size: int = 16
    max_new_tokens_limit: int = 2048
    cache_conversations: int = 2
    auth: tuple[tuple[str, str], ...] = ()
    feedback_dir: str | None = None

    def __repr__(self) -> str:  # never show passwords in logs or tracebacks
        shown = {**vars(self), "auth": [(user, "***") for user, _ in self.auth]}
        return f"Settings({', '.join(f'{key}={value!r}' for key, value in shown.items())})"


def _env_flag(environ: Mapping[str, str], name: str) -> bool:
    value = environ.get(name, "").strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise SystemExit(f"{name}={environ[name]!r}: use 1/0, true/false, yes/no or on/off")


def _env(environ: Mapping[str, str], *names: str, default: str) -> str:
    for name in names:
        if environ.get(name):
            return environ[name]
    return default


def _integer_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}: {value}")
        return value

    return parse


_positive_int = _integer_at_least(1)


def _credentials(text: str) -> tuple[tuple[str, str], ...]:
    """``USER:PASSWORD`` pairs separated by commas."""
    pairs = []
    for item in text.split(","):
        user, colon, password = item.strip().partition(":")
        if not (user and colon and password):
            raise argparse.ArgumentTypeError("use USER:PASSWORD (several separated by commas)")
        pairs.append((user, password))
    return tuple(pairs)


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
    return value


def _device(text: str) -> str:
    if text in DEVICE_CHOICES or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"choose one of {', '.join(DEVICE_CHOICES)} or cuda:N, not {text!r}")


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The command-line parser; defaults come from the environment."""
    env = os.environ if environ is None else environ
    on_spaces = bool(env.get("SPACE_ID"))
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="app.py",
        description="日本語 StableLM チャット (jslm-chat): a Japanese-first browser chat for Japanese StableLM.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Presets: " + ", ".join(PRESETS) + ". Every flag has an environment variable (in brackets).",
    )
    parser.add_argument(
        "--model",
        default=_env(env, "JSLM_MODEL", default=defaults.model),
        metavar="ID_OR_PATH",
        help="preset name, Hugging Face model id, or local model directory [JSLM_MODEL]",
    )
    parser.add_argument(
        "--demo",
        action=argparse.BooleanOptionalAction,
        default=_env_flag(env, "JSLM_DEMO"),
        help="serve the tiny offline demo model on CPU (built once, no download) [JSLM_DEMO]",
    )
    parser.add_argument(
        "--device",
        type=_device,
        default=_env(env, "JSLM_DEVICE", default=defaults.device),
        help="auto (GPU if present), cpu, cuda, cuda:N or mps [JSLM_DEVICE]",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default=_env(env, "JSLM_DTYPE", default=defaults.dtype),
        help="weights dtype; auto = float16 on GPU, bfloat16/float32 on CPU [JSLM_DTYPE]",
    )
    parser.add_argument(
        "--host",
        default=_env(env, "JSLM_HOST", "GRADIO_SERVER_NAME", default="0.0.0.0" if on_spaces else defaults.host),
        help="address to listen on; 0.0.0.0 for every interface [JSLM_HOST, GRADIO_SERVER_NAME]",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=_env(env, "JSLM_PORT", "GRADIO_SERVER_PORT", default=str(defaults.port)),
        help="TCP port [JSLM_PORT, GRADIO_SERVER_PORT]",
    )
    parser.add_argument(
        "--share",
        action=argparse.BooleanOptionalAction,
        default=_env_flag(env, "JSLM_SHARE"),
        help="also open a public *.gradio.live link (needs internet; ignored on Spaces) [JSLM_SHARE]",
    )
    _add_serving_flags(parser, env, defaults)
    return parser


def _add_serving_flags(parser: argparse.ArgumentParser, env: Mapping[str, str], defaults: Settings) -> None:
    """Backend, limits, password and feedback flags."""
    parser.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default=_env(env, "JSLM_BACKEND", default=defaults.backend),
        help="transformers: the model in this process; vllm: a vLLM server (--vllm-url) [JSLM_BACKEND]",
    )
    parser.add_argument(
        "--vllm-url",
        default=_env(env, "JSLM_VLLM_URL", default=defaults.vllm_url),
        help="the vLLM server's address, with --backend vllm [JSLM_VLLM_URL]",
    )
    concurrency = env.get("JSLM_CONCURRENCY")
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=concurrency or None,
        help="replies generated at the same time (default: 1 in-process, 64 with vLLM) [JSLM_CONCURRENCY]",
    )
    for flag, name, default, low, meaning in (
        (
            "--queue-size",
            "JSLM_QUEUE_SIZE",
            defaults.queue_size,
            0,
            "requests that may wait; more get a 'busy' message",
        ),
        (
            "--max-new-tokens-limit",
            "JSLM_MAX_NEW_TOKENS_LIMIT",
            defaults.max_new_tokens_limit,
            1,
            "upper bound of the max_new_tokens slider and API value",
        ),
        (
            "--cache-conversations",
            "JSLM_CACHE_CONVERSATIONS",
            defaults.cache_conversations,
            0,
            "in-process: conversations whose attention cache is kept for the next turn (0: none)",
        ),
    ):
        parser.add_argument(
            flag, type=_integer_at_least(low), default=_env(env, name, default=str(default)), help=f"{meaning} [{name}]"
        )
    parser.add_argument(
        "--auth",
        type=_credentials,
        default=_credentials(env["JSLM_AUTH"]) if env.get("JSLM_AUTH") else (),
        metavar="USER:PASSWORD[,USER:PASSWORD…]",
        help="ask for a login before the UI and the API (never logged) [JSLM_AUTH]",
    )
    parser.add_argument(
        "--feedback-dir",
        default=_env(env, "JSLM_FEEDBACK_DIR", default="") or None,
        metavar="DIR",
        help="append 👍/👎 votes on replies as JSON lines to a file in DIR; without it no buttons [JSLM_FEEDBACK_DIR]",
    )


def parse_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``argv`` (default: ``sys.argv[1:]``) over the environment."""
    args = build_parser(environ).parse_args(argv)
    return Settings(**vars(args))
