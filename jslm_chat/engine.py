"""The generation engine: load a model, stream replies from a background thread, stop for real.

Only this module (and the demo model builder) touches torch. The UI talks to :class:`Engine`
through :meth:`Engine.stream`, which returns a :class:`Reply`: iterate it for the growing text;
closing it (leaving a ``with`` block, or closing the generator that iterates it, as Gradio does
on Stop and on disconnect) sets a per-request event that a ``StoppingCriteria`` checks after every
decoding step, then joins the generation thread.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, StoppingCriteria

from .params import GenerationParams
from .presets import ModelPreset, resolve_preset
from .prompt import PromptBuilder, RenderedPrompt, Turn, get_format
from .streaming import JapaneseTextStreamer

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
DTYPE_CHOICES = ("auto", "float16", "bfloat16", "float32")
QUEUE_POLL_SECONDS = 0.2
JOIN_TIMEOUT_SECONDS = 120.0
SMALL_MODEL_PARAMETERS = 1_000_000_000
LOAD_FIXES = (
    "対処: ローカルに保存したモデルを --model PATH で指定するか、--demo でオフラインのデモモデルを使ってください。"
    " / Fix: point --model PATH at a local copy of the model, or run with --demo for the offline demo model."
)


class ModelLoadError(RuntimeError):
    """The model or tokenizer could not be loaded; the message names the cause and the fixes."""


class GenerationError(RuntimeError):
    """Generation failed inside the background thread (for example, out of GPU memory)."""


@dataclass(frozen=True)
class Conversation:
    """What the model answers: a system prompt, finished turns and the newest user message."""

    system: str
    turns: Sequence[Turn]
    message: str


@dataclass(frozen=True)
class Placement:
    """Where and in which precision the weights live."""

    device_map: str | dict[str, str] | None
    dtype: torch.dtype
    device_label: str


def choose_placement(device: str = "auto", dtype: str = "auto", parameters: int | None = None) -> Placement:
    """Pick device and dtype: fp16 over all GPUs when CUDA is there, else CPU in bf16 or fp32.

    ``device`` is one of ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``; ``dtype`` one of
    ``auto``, ``float16``, ``bfloat16``, ``float32``. Explicit values win over the defaults. On CPU,
    ``auto`` is bfloat16 where the CPU supports it natively, to halve the memory of a 7B model;
    a model known to have fewer than a billion ``parameters`` stays in float32, which is faster.
    """
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_CHOICES)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(
                "CUDA の GPU が見つかりません。--device cpu を指定するか、GPU のある環境で実行してください。"
                " / No CUDA GPU is available: use --device cpu or run on a machine with a GPU."
            )
        chosen = torch.float16 if dtype == "auto" else getattr(torch, dtype)
        count = torch.cuda.device_count()
        if device == "cuda" and os.environ.get("SPACES_ZERO_GPU"):
            return Placement({"": "cuda"}, chosen, "cuda (ZeroGPU)")  # ZeroGPU attaches one GPU per call
        if device == "cuda":
            return Placement("auto", chosen, f"cuda ×{count}" if count > 1 else "cuda")
        return Placement({"": device}, chosen, device)
    if device == "mps":
        return Placement({"": "mps"}, torch.float16 if dtype == "auto" else getattr(torch, dtype), "mps")
    if device != "cpu":
        raise ValueError(f"unknown device {device!r}; choose one of auto, cpu, cuda, cuda:N, mps")
    if dtype != "auto":
        return Placement(None, getattr(torch, dtype), "cpu")
    small = parameters is not None and parameters < SMALL_MODEL_PARAMETERS
    return Placement(None, torch.float32 if small or not cpu_supports_bfloat16() else torch.bfloat16, "cpu")


def estimate_parameters(config: Any) -> int | None:
    """Roughly how many weights a Llama-like config describes (attention, MLP, embeddings)."""
    try:
        hidden, layers = int(config.hidden_size), int(config.num_hidden_layers)
        intermediate, vocab = int(config.intermediate_size), int(config.vocab_size)
    except (AttributeError, TypeError, ValueError):
        return None
    return layers * (4 * hidden * hidden + 3 * hidden * intermediate) + 2 * vocab * hidden


def cpu_supports_bfloat16() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (AVX512-BF16/AMX, or Arm BF16)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class Engine:
    """A loaded model and tokenizer that stream replies to conversations."""

    def __init__(self, model: Any, tokenizer: Any, preset: ModelPreset, placement: Placement) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.preset = preset
        self.placement = placement
        self._prompts = PromptBuilder(tokenizer, get_format(preset.prompt_format))

    @property
    def context_length(self) -> int:
        """Tokens the model attends to: prompt plus reply."""
        return self.preset.context_length

    @property
    def dtype_label(self) -> str:
        """The weights' dtype, as a short name (``float16``)."""
        return str(self.placement.dtype).removeprefix("torch.")

    def prompt_budget(self, max_new_tokens: int) -> int:
        """How many prompt tokens fit next to a reply of ``max_new_tokens``."""
        return self.context_length - max_new_tokens

    def prepare(self, conversation: Conversation, max_new_tokens: int) -> RenderedPrompt:
        """The exact prompt for ``conversation``, oldest turns dropped to leave room for the reply."""
        return self._prompts.build(
            conversation.system,
            conversation.turns,
            conversation.message,
            budget=self.prompt_budget(max_new_tokens),
        )

    def stream(self, conversation: Conversation, params: GenerationParams) -> Reply:
        """Start a reply (the thread starts on first iteration). Raises ``PromptTooLongError``."""
        return Reply(self, self.prepare(conversation, params.max_new_tokens), params)


class _StopAndCount(StoppingCriteria):
    """Stops generation once ``event`` is set; records when each step finished."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.stopped = False
        self.steps = 0
        self.first_step_at: float | None = None
        self.last_step_at: float | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        now = time.perf_counter()
        self.steps += 1
        self.first_step_at = self.first_step_at or now
        self.last_step_at = now
        self.stopped = self.event.is_set()
        return torch.full((input_ids.shape[0],), self.stopped, dtype=torch.bool, device=input_ids.device)


class Reply:
    """One reply being generated. Iterate once for the growing text; ``close()`` stops it.

    After iteration: ``text``, ``new_tokens``, ``finish_reason`` (``"eos"``, ``"length"``,
    ``"stopped"`` or ``"error"``), ``seed`` (the one used, also when drawn at random), ``tokens_per_second`` and
    ``seconds_to_first_token``.
    """

    def __init__(self, engine: Engine, prompt: RenderedPrompt, params: GenerationParams) -> None:
        self.prompt = prompt
        self.params = params
        self.seed = params.seed if params.seed is not None else secrets.randbelow(2**31)
        self.text = ""
        self.finish_reason: str | None = None
        self._engine = engine
        self._stop = threading.Event()
        self._progress = _StopAndCount(self._stop)
        self._streamer = JapaneseTextStreamer(
            engine.tokenizer, skip_prompt=True, timeout=QUEUE_POLL_SECONDS, skip_special_tokens=True
        )
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._started_at = 0.0

    @property
    def new_tokens(self) -> int:
        """Tokens generated so far."""
        return self._progress.steps

    @property
    def seconds_to_first_token(self) -> float | None:
        """Latency from start to the first generated token (prompt processing included)."""
        first = self._progress.first_step_at
        return None if first is None else first - self._started_at

    @property
    def tokens_per_second(self) -> float | None:
        """Decoding speed after the first token."""
        first, last = self._progress.first_step_at, self._progress.last_step_at
        if first is None or last is None or self.new_tokens < 2 or last <= first:
            return None
        return (self.new_tokens - 1) / (last - first)

    @property
    def running(self) -> bool:
        """Whether the generation thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def __iter__(self) -> Iterator[str]:
        if self._thread is not None:
            raise RuntimeError("a Reply can be iterated only once")
        self._started_at = time.perf_counter()
        self._thread = threading.Thread(target=self._generate, name="jslm-generate", daemon=True)
        self._thread.start()
        try:
            for chunk in self._chunks():
                self.text += chunk
                yield self.text
        finally:
            self.close()
        if self._error is not None:
            raise _as_generation_error(self._error) from self._error

    def close(self) -> None:
        """Stop generating (within one decoding step) and wait for the thread to end."""
        self._stop.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(JOIN_TIMEOUT_SECONDS)
        if thread.is_alive():
            logger.error("generation thread did not stop within %.0f s", JOIN_TIMEOUT_SECONDS)

    def __enter__(self) -> Reply:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _chunks(self) -> Iterator[str]:
        """Text from the streamer, everything queued so far in one chunk; never blocks forever.

        A consumer slower than the model (a browser over a slow link, say) gets one update with
        all the new text rather than a growing backlog of one-token updates.
        """
        pending = self._streamer.text_queue
        end = self._streamer.stop_signal
        while True:
            try:
                parts = [pending.get(timeout=QUEUE_POLL_SECONDS)]
            except queue.Empty:
                if self._thread is not None and not self._thread.is_alive() and pending.empty():
                    return
                continue
            while parts[-1] is not end:
                try:
                    parts.append(pending.get_nowait())
                except queue.Empty:
                    break
            ended = parts[-1] is end
            text = "".join(parts[:-1] if ended else parts)
            if text:
                yield text
            if ended:
                return

    def _generate(self) -> None:
        engine, params = self._engine, self.params
        device = engine.model.device
        input_ids = torch.tensor([self.prompt.token_ids], dtype=torch.long, device=device)
        try:
            torch.manual_seed(self.seed)
            with torch.inference_mode():
                engine.model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    generation_config=_generation_config(engine, params),
                    streamer=self._streamer,
                    stopping_criteria=[self._progress],
                )
        except BaseException as error:  # reported to the consumer, which re-raises it
            self._error = error
            logger.exception("generation failed")
            self._streamer.end()
            _free_accelerator_memory()
        if self._error is not None:
            self.finish_reason = "error"
        elif self._progress.stopped:
            self.finish_reason = "stopped"
        else:
            self.finish_reason = "length" if self.new_tokens >= params.max_new_tokens else "eos"


def _generation_config(engine: Engine, params: GenerationParams) -> GenerationConfig:
    model_config = engine.model.generation_config
    eos = model_config.eos_token_id if model_config.eos_token_id is not None else engine.tokenizer.eos_token_id
    pad = engine.tokenizer.pad_token_id
    sampling: dict[str, Any] = (
        {"do_sample": False}
        if params.greedy
        else {
            "do_sample": True,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k or None,
        }
    )
    return GenerationConfig(
        max_new_tokens=params.max_new_tokens,
        repetition_penalty=params.repetition_penalty,
        eos_token_id=eos,
        bos_token_id=engine.tokenizer.bos_token_id,
        pad_token_id=pad if pad is not None else eos,
        **sampling,
    )


def _as_generation_error(error: BaseException) -> GenerationError:
    if isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower():
        return GenerationError(
            "GPU のメモリが足りなくなりました。最大生成トークン数を減らすか、会話をクリアしてもう一度お試しください。"
            " / Out of GPU memory: lower max_new_tokens or clear the conversation, then try again."
        )
    return GenerationError(
        f"生成中にエラーが発生しました: {type(error).__name__}: {error}"
        f" / Generation failed: {type(error).__name__}: {error}"
    )


def _free_accelerator_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_engine(model: str, *, device: str = "auto", dtype: str = "auto", display_name: str | None = None) -> Engine:
    """Load a model by preset key, hub id or local directory. Raises :class:`ModelLoadError`."""
    preset = resolve_preset(model)
    if display_name:
        preset = dataclasses.replace(preset, display_name=display_name)
    source = preset.model_id
    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as error:
        raise ModelLoadError(describe_load_failure(source, error)) from error
    placement = choose_placement(device, dtype, estimate_parameters(config))
    if placement.device_label == "cpu":
        logger.warning(
            "GPU なしで CPU (%s) で実行します。7B モデルの生成はとても遅くなります。"
            " / Running on CPU (%s): a 7B model generates very slowly.",
            str(placement.dtype).removeprefix("torch."),
            str(placement.dtype).removeprefix("torch."),
        )
    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        loaded = AutoModelForCausalLM.from_pretrained(source, dtype=placement.dtype, device_map=placement.device_map)
    except Exception as error:
        raise ModelLoadError(describe_load_failure(source, error)) from error
    loaded.eval()
    configured_length = getattr(loaded.config, "max_position_embeddings", None)
    if isinstance(configured_length, int) and 0 < configured_length < preset.context_length:
        preset = preset.fitted_to_context(configured_length)
    logger.info(
        "loaded %s on %s (%s) in %.1f s",
        source,
        placement.device_label,
        str(placement.dtype).removeprefix("torch."),
        time.perf_counter() - started,
    )
    return Engine(loaded, tokenizer, preset, placement)


def describe_load_failure(source: str, error: BaseException) -> str:
    """One clear, bilingual message naming why ``source`` failed to load and how to fix it."""
    text = str(error)
    lowered = text.lower()
    looks_like_path = source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source
    if looks_like_path and not Path(source).expanduser().exists():
        cause = f"フォルダ {source} が見つかりません。 / The folder {source} does not exist."
    elif isinstance(error, (MemoryError, torch.OutOfMemoryError)) or ("memory" in lowered and "allocat" in lowered):
        cause = (
            "メモリが足りません。GPU を使うか、--dtype float16 / bfloat16 を試してください。"
            " / Not enough memory: use a GPU, or try --dtype float16 / bfloat16."
        )
    elif isinstance(error, ImportError):
        cause = f"必要なパッケージがありません: {text} / A required package is missing: {text}"
    elif "couldn't connect" in lowered or "offline" in lowered or "connection" in lowered:
        cause = (
            f"{source} をダウンロードできません（ネットワークに接続できず、キャッシュにもありません）。"
            f" / Cannot download {source}: no network connection and no cached copy."
        )
    elif Path(source).expanduser().is_dir():
        cause = (
            f"フォルダ {source} にモデルまたはトークナイザーのファイルがありません: {text}"
            f" / The folder {source} holds no loadable model or tokenizer: {text}"
        )
    else:
        cause = f"{source} を読み込めません: {text} / Cannot load {source}: {text}"
    return f"モデルを読み込めませんでした / Could not load the model.\n{cause}\n{LOAD_FIXES}"
