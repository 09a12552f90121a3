"""App settings from command-line flags and ``JSLM_*`` environment variables (flags win)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jslm_chat.model.presets import DEFAULT_PRESET_KEY, PRESETS

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
DTYPE_CHOICES = ("auto", "float16", "bfloat16", "float32")
BACKEND_CHOICES = ("transformers", "vllm")
QUANTIZE_CHOICES = ("auto", "none", "int8", "nf4")
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
    compile: bool = False
    quantize: str = "auto"
    auth: tuple[tuple[str, str], ...] = ()
    api_key: tuple[str, ...] = ()
    feedback_dir: str | None = None
    behind_proxy: bool = False  # on by default on Spaces

    def __repr__(self) -> str:  # never show passwords or keys in logs or tracebacks
        shown = {**vars(self), "auth": [(user, "***") for user, _ in self.auth], "api_key": ["***"] * len(self.api_key)}
        return f"Settings({', '.join(f'{key}={value!r}' for key, value in shown.items())})"


def _env_flag(environ: Mapping[str, str], name: str) -> bool:
    value = environ.get(name, "").strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise SystemExit(f"{name}={environ[name]!r}: use 1/0, true/false, yes/no or on/off")


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"choose one of {', '.join(choices)}, not {text!r}")
        return text

    return parse


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


def _credentials(text: str) -> tuple[tuple[str, str], ...]:
    """``USER:PASSWORD`` pairs separated by commas."""
    pairs = []
    for item in text.split(","):
        user, colon, password = item.strip().partition(":")
        if not (user and colon and password):
            raise argparse.ArgumentTypeError("use USER:PASSWORD (several separated by commas)")
        pairs.append((user, password))
    return tuple(pairs)


def _keys(text: str) -> tuple[str, ...]:
    """API keys separated by commas."""
    keys = tuple(key.strip() for key in text.split(","))
    if not all(keys):
        raise argparse.ArgumentTypeError("use KEY (several separated by commas), with no empty key")
    return keys


def _port(text: str) -> int:
    value = _integer_at_least(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
    return value


def _device(text: str) -> str:
    if text in DEVICE_CHOICES or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"choose one of {', '.join(DEVICE_CHOICES)} or cuda:N, not {text!r}")


@dataclass(frozen=True)
class Flag:
    """One command-line flag: the setting it fills, its environment variables, how to read it."""

    name: str  # the Settings field; the flag is --name-with-dashes
    help: str
    env: tuple[str, ...] = ()  # the first one set wins; default JSLM_NAME
    parse: Callable[[str], object] | None = None  # None: text as it is
    switch: bool = False  # --name / --no-name
    metavar: str | None = None

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def variables(self) -> tuple[str, ...]:
        return self.env or ("JSLM_" + self.name.upper(),)


FLAGS: tuple[Flag, ...] = (
    Flag("model", "preset name, Hugging Face model id, or local model directory", metavar="ID_OR_PATH"),
    Flag("demo", "serve the tiny offline demo model on CPU (built once, no download)", switch=True),
    Flag("device", "auto (GPU if present), cpu, cuda, cuda:N or mps", parse=_device),
    Flag(
        "dtype",
        "weights dtype: auto (float16 on GPU, bfloat16/float32 on CPU), float16, bfloat16, float32",
        parse=_choice(DTYPE_CHOICES),
    ),
    Flag("host", "address to listen on; 0.0.0.0 for every interface", env=("JSLM_HOST", "GRADIO_SERVER_NAME")),
    Flag("port", "TCP port", env=("JSLM_PORT", "GRADIO_SERVER_PORT"), parse=_port),
    Flag("share", "also open a public *.gradio.live link (needs internet; ignored on Spaces)", switch=True),
    Flag(
        "backend",
        "transformers: the model in this process; vllm: a vLLM server (--vllm-url)",
        parse=_choice(BACKEND_CHOICES),
    ),
    Flag("vllm_url", "the vLLM server's address, with --backend vllm"),
    Flag(
        "concurrency",
        "replies generated at the same time (default: 1 in-process, 64 with vLLM)",
        parse=_integer_at_least(1),
    ),
    Flag("queue_size", "requests that may wait; more get a 'busy' message", parse=_integer_at_least(0)),
    Flag("max_new_tokens_limit", "upper bound of the max_new_tokens slider and API value", parse=_integer_at_least(1)),
    Flag(
        "cache_conversations",
        "in-process: conversations whose attention cache is kept for the next turn (0: none)",
        parse=_integer_at_least(0),
    ),
    Flag(
        "compile",
        "in-process: decode with a static cache and torch.compile (for GPUs; compiles at start-up)",
        switch=True,
    ),
    Flag(
        "quantize",
        "in-process weights: auto (for the GPU's free memory; none on CPU and ZeroGPU), none (float16),"
        " int8 (LLM.int8) or nf4 (4-bit), through bitsandbytes; see docs/quantization.md",
        parse=_choice(QUANTIZE_CHOICES),
    ),
    Flag(
        "auth",
        "ask for a login before the UI and the API (never logged)",
        parse=_credentials,
        metavar="USER:PASSWORD[,USER:PASSWORD…]",
    ),
    Flag(
        "api_key",
        "require Authorization: Bearer KEY on the OpenAI-compatible API /v1 (never logged; with --auth and no key"
        " the API is closed)",
        parse=_keys,
        metavar="KEY[,KEY…]",
    ),
    Flag(
        "feedback_dir",
        "append 👍/👎 votes on replies as JSON lines to a file in DIR; without it no buttons",
        metavar="DIR",
    ),
    Flag(
        "behind_proxy",
        "count clients by the address a reverse proxy forwards (X-Forwarded-For); on by default on Spaces",
        switch=True,
    ),
)


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The command-line parser; defaults come from the environment, then from :class:`Settings`."""
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="app.py",
        description="日本語 StableLM チャット (jslm-chat): a Japanese-first browser chat for Japanese StableLM.",
        epilog="Presets: " + ", ".join(PRESETS) + ". Every flag has an environment variable (in brackets).",
    )
    defaults = Settings(host="0.0.0.0", behind_proxy=True) if env.get("SPACE_ID") else Settings()
    for flag in FLAGS:
        default = getattr(defaults, flag.name)
        shown = "" if default in (None, ()) else f"; default {default}"
        options: dict[str, Any] = {"help": f"{flag.help}{shown} [{', '.join(flag.variables)}]"}
        if flag.switch:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = flag.parse or str
            options["metavar"] = flag.metavar
        options["default"] = _from_environment(flag, env, default)
        parser.add_argument(flag.option, **options)
    return parser


def _from_environment(flag: Flag, env: Mapping[str, str], default: object) -> object:
    """The flag's default: its first environment variable that is set (parsed), else ``default``."""
    for name in flag.variables:
        text = env.get(name, "").strip()
        if not text:
            continue
        if flag.switch:
            return _env_flag(env, name)
        try:
            return flag.parse(text) if flag.parse else text
        except argparse.ArgumentTypeError as error:
            raise SystemExit(f"{name}={text!r}: {error}") from None
    return default


def parse_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``argv`` (default: ``sys.argv[1:]``) over the environment."""
    args = build_parser(environ).parse_args(argv)
    return Settings(**vars(args))
