"""The in-process backend's two costs, measured in one run: re-reading the history, and the app's tax.

    python bench/bench_inprocess.py [--models demo,wide] [--tokens 128] [--no-api] [--compile]

For the offline demo model and a wider random Llama (hidden 512, 8 layers, the demo tokenizer,
4,096 positions; built in a temporary folder) it prints:

- time to first token at turns 1-10 of a long chat (each turn a question and a long answer),
  with KV-cache reuse and without (a second backend on the same weights with
  ``cache_slots=0``), and the turn-10 / turn-1 ratio (goal <= 1.5 with reuse);
- decoding speed (tokens/s after the first token, median of 15 rounds) of a bare ``model.generate()``, then
  with the stop-and-count criterion, then with the streamer as well, then through the backend's
  ``stream()`` (thread and queue hand-off included) and through the app's ``/chat`` API (Gradio,
  HTTP, a plain HTTP client); each with its ratio to bare ``generate()`` (goal >= 0.95);
- decoding speed after turn 10's long prompt: a bare ``generate()`` (transformers' DynamicCache)
  against ``backend.stream()`` (the app's cache; with ``--compile``, static and compiled).

One torch thread by default: on a busy 2-core machine two threads make a small model's step
times vary 15-fold (each operator waits for the core another process holds); ``--threads 0``
keeps torch's default. Prints figures; asserts nothing. Every reply runs to its full length (``ignore_eos``) and greedy.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # api_client

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from jslm_chat.backends.inprocess.backend import InProcessBackend
from jslm_chat.backends.inprocess.generation import _StopAndCount, generation_config
from jslm_chat.backends.inprocess.loading import load_inprocess_backend
from jslm_chat.backends.inprocess.streamer import JapaneseTextStreamer
from jslm_chat.demo_model import demo_model_dir
from jslm_chat.model.backend import Backend, Conversation, ReplyStream
from jslm_chat.model.params import GenerationParams
from jslm_chat.model.prompt import Turn

SYSTEM = "あなたは役立つアシスタントです。"
QUESTION = "日本の文化について、歴史と今の暮らしの両方から詳しく教えてください。"
QUESTION_TOKENS = 40  # about, with the format's own tokens
ANSWER = "日本の文化はとても奥が深く、季節の行事や食べ物、言葉の中に昔からの考え方が残っています。"
TURNS = 10
TTFT_REPLY_TOKENS = 32
RUNS = 7  # plays of the chat; the median of seven steadies first tokens of a few ms
DECODE_ROUNDS = 15
LONG_DECODE_ROUNDS = 5  # each bare run prefills the whole long prompt


def greedy(max_new_tokens: int) -> GenerationParams:
    return GenerationParams(max_new_tokens, 0.0, 1.0, 0, 1.0, 0, ignore_eos=True)


def wide_model(folder: Path) -> Path:
    """A random Llama, hidden 512 × 8 layers, with the demo tokenizer, saved in ``folder``."""
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=8, head_dim=64, max_position_embeddings=4096,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def without_reuse(backend: InProcessBackend) -> InProcessBackend:
    """A second backend on the same weights that prefills every prompt from scratch."""
    return InProcessBackend(
        backend.model, backend.tokenizer, backend.preset, backend.placement, cache_slots=0, compiled=backend.compiled
    )


def finished(reply: ReplyStream) -> ReplyStream:
    for _ in reply:
        pass
    return reply


def long_chat(backend: Backend, target_tokens: int) -> list[Conversation]:
    """Ten turns, a short question and a long answer each, whose last prompt holds about ``target_tokens``."""
    answer_tokens = len(backend.tokenizer(ANSWER, add_special_tokens=False)["input_ids"])
    answer = ANSWER * max(1, (target_tokens // TURNS - QUESTION_TOKENS) // answer_tokens)
    turns = [Turn(f"{index + 1}. {QUESTION}", answer) for index in range(TURNS)]
    return [Conversation(SYSTEM, turns[:index], turns[index].user) for index in range(TURNS)]


def play(backend: Backend, conversations: list[Conversation]) -> list[ReplyStream]:
    """The chat's turns in order, each after the previous answer was generated (untimed), as in the app.

    The app's cache after a turn holds that turn's prompt and the reply the model wrote; here the
    reply is given (the prompt ends with it as a continuation, one more token generated), so that
    every turn measures the same prompts whatever the weights say.
    """
    replies: list[ReplyStream] = []
    for conversation in conversations:
        if conversation.turns:
            last = conversation.turns[-1]
            written = Conversation(SYSTEM, conversation.turns[:-1], last.user, continuation=last.assistant)
            finished(backend.stream(written, greedy(1)))
        replies.append(finished(backend.stream(conversation, greedy(TTFT_REPLY_TOKENS))))
    return replies


def first_token_times(backend: Backend, conversations: list[Conversation]) -> list[tuple[float, int, int]]:
    """(seconds to first token, prompt tokens, reused tokens) per turn, median of RUNS plays of the chat."""
    plays = []
    for _ in range(RUNS):
        backend.close()  # each play starts with an empty pool, as a new chat does
        plays.append(play(backend, conversations))
    return [
        (
            statistics.median(r.seconds_to_first_token or 0.0 for r in turn),
            turn[0].prompt.num_tokens,
            turn[0].reused_tokens,
        )
        for turn in zip(*plays, strict=True)
    ]


def report_first_tokens(backend: InProcessBackend, conversations: list[Conversation]) -> None:
    fresh = without_reuse(backend)
    reused, scratch = first_token_times(backend, conversations), first_token_times(fresh, conversations)
    backend.close()
    print(f"  time to first token (ms, median of {RUNS}), reply {TTFT_REPLY_TOKENS} tokens:")
    print(f"  {'turn':>6}{'prompt':>8}{'reused':>8}{'reuse':>9}{'no reuse':>10}")
    for turn, ((with_s, tokens, held), (without_s, _, _)) in enumerate(zip(reused, scratch, strict=True), 1):
        print(f"  {turn:>6}{tokens:>8}{held:>8}{with_s * 1000:>9.1f}{without_s * 1000:>10.1f}")
    print(
        f"  turn 10 / turn 1: {reused[-1][0] / reused[0][0]:.2f}× with reuse (goal ≤ 1.5), "
        f"{scratch[-1][0] / scratch[0][0]:.2f}× without"
    )


def decode_rates(runs: dict[str, Callable[[int], Any]], tokens: int, rounds: int = DECODE_ROUNDS) -> dict[str, float]:
    """Tokens/s after the first, per path: (tokens - 1) / (time for ``tokens`` - time for 1).

    The same measure for every path, from the caller's side: what one request costs besides
    decoding (prefill, start, HTTP) is the same for 1 token and for ``tokens`` and cancels out.
    The paths take turns, ``rounds`` times, and each gets its median: a slow spell of a shared
    machine then touches all of them alike. A round whose 1-token run took longer than the whole
    reply measures nothing and is left out (``nan`` if every round was).
    """
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run(1)
            one = time.perf_counter() - started
            started = time.perf_counter()
            run(tokens)
            decoding = time.perf_counter() - started - one
            if decoding > 0:  # else a slow spell hit the 1-token run: no measure this round
                rates[name].append((tokens - 1) / decoding)
    return {name: statistics.median(values) if values else math.nan for name, values in rates.items()}


def bare_generate(backend: InProcessBackend, prompt_ids: list[int], *, criteria: bool, streamer: bool) -> Callable:
    """``model.generate()`` on ``prompt_ids`` with the app's settings, optionally its criterion and streamer."""
    model, tokenizer = backend.model, backend.tokenizer
    input_ids = torch.tensor([prompt_ids], device=model.device)  # as the app does: no copies per step

    def run(tokens: int) -> None:
        extra: dict[str, Any] = {}
        if criteria:
            extra["stopping_criteria"] = [_StopAndCount(threading.Event())]
        if streamer:
            extra["streamer"] = JapaneseTextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        with torch.inference_mode():
            model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                generation_config=generation_config(tokenizer, model, greedy(tokens)), **extra,
            )  # fmt: skip

    return run


def backend_stream(backend: Backend, conversation: Conversation) -> Callable[[int], Any]:
    """A reply through ``backend.stream()``, iterated to its end as the UI does."""
    return lambda tokens: finished(backend.stream(conversation, greedy(tokens)))


@contextlib.contextmanager
def app_client(backend: Backend) -> Iterator[tuple[Callable[[Conversation], Callable[[int], Any]], ...]]:
    """The app serving ``backend`` on a free port; yields makers of ``/chat`` runs through its plain
    HTTP API (``bench/api_client.py``): one with the client in this process, one with the client in
    a process of its own (as any real client is: a browser, a script), whose work then no longer
    shares this process with the server's."""
    from api_client import ClientProcess, chat_parameters
    from api_client import chat as api_chat

    from jslm_chat.server import create_app, launch
    from jslm_chat.settings import Settings

    original = Backend.stream

    def endless(self: Backend, conversation: Conversation, params: GenerationParams) -> ReplyStream:
        return original(self, conversation, dataclasses.replace(params, ignore_eos=True))

    Backend.stream = endless  # type: ignore[method-assign]  # the browser's /chat has no ignore_eos
    stack = contextlib.ExitStack()
    settings = Settings(demo=True, host="127.0.0.1", port=free_port())
    app, service = create_app(settings, backend=backend)
    try:
        url = f"http://127.0.0.1:{settings.port}/"
        launch(app, service, settings, block=False)
        parameters = chat_parameters(url)

        def values(conversation: Conversation, count: int) -> dict[str, Any]:
            return {"message": conversation.message, "history": [], "max_new_tokens": count, "temperature": 0}

        def chat(conversation: Conversation) -> Callable[[int], Any]:
            return lambda count: api_chat(url, parameters, values(conversation, count))

        remote = ClientProcess(url)
        stack.callback(remote.close)

        def chat_from_another_process(conversation: Conversation) -> Callable[[int], Any]:
            return lambda count: remote.send([values(conversation, count)])

        yield chat, chat_from_another_process
    finally:
        Backend.stream = original  # type: ignore[method-assign]
        stack.close()
        app.close()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def report_decoding(backend: InProcessBackend, tokens: int, with_api: bool) -> None:
    conversation = Conversation(SYSTEM, [], "日本の四季について教えてください。")
    prompt_ids = backend.prepare(conversation, tokens).token_ids
    runs = {
        "bare generate()": bare_generate(backend, prompt_ids, criteria=False, streamer=False),
        "+ stop criterion": bare_generate(backend, prompt_ids, criteria=True, streamer=False),
        "+ streamer": bare_generate(backend, prompt_ids, criteria=True, streamer=True),
        "backend.stream()": backend_stream(backend, conversation),
    }
    with contextlib.ExitStack() as stack:
        if with_api:
            in_process, remote = stack.enter_context(app_client(backend))
            runs["/chat, client in this process"] = in_process(conversation)
            runs["/chat, client in own process"] = remote(conversation)
        for run in runs.values():
            run(8)  # warm-up
        rates = decode_rates(runs, tokens)
    print_rates(f"decoding, {tokens} tokens after a {len(prompt_ids)}-token prompt", rates, DECODE_ROUNDS)


def report_long_decoding(backend: InProcessBackend, conversation: Conversation, tokens: int) -> None:
    """Decoding after turn 10's prompt: transformers' DynamicCache (a bare ``generate()``, which
    copies the whole cache every token) against the backend's cache (kept from the previous run)."""
    prompt_ids = backend.prepare(conversation, tokens).token_ids
    runs = {
        "bare generate()": bare_generate(backend, prompt_ids, criteria=False, streamer=False),
        "backend.stream()": backend_stream(backend, conversation),
    }
    for run in runs.values():
        run(8)  # warm-up; the backend's pool then holds this prompt
    rates = decode_rates(runs, tokens, LONG_DECODE_ROUNDS)
    print_rates(f"decoding, {tokens} tokens after turn 10's {len(prompt_ids)}-token prompt", rates, LONG_DECODE_ROUNDS)


def print_rates(title: str, rates: dict[str, float], rounds: int) -> None:
    bare = rates["bare generate()"]
    print(f"  {title} (tokens/s, median of {rounds}):")
    for name, rate in rates.items():
        print(f"  {name:<32}{rate:>9.1f}  {rate / bare:>5.2f}× bare")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,wide", help="comma-separated: demo, wide")
    parser.add_argument("--tokens", type=int, default=128, help="reply length for the decoding speed")
    parser.add_argument("--no-api", action="store_true", help="skip the /chat API measurement")
    parser.add_argument("--compile", action="store_true", help="the backend decodes as with the app's --compile")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (0: torch's default); 1 is steady on a shared machine"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as scratch:
        folders = {"demo": (demo_model_dir(), 1800), "wide": (None, 3900)}
        for name in args.models.split(","):
            folder, target = folders[name]
            path = str(folder or wide_model(Path(scratch)))
            backend = load_inprocess_backend(path, device="cpu", dtype="float32", compiled=args.compile)
            print(f"\n{name} model: {backend.label}, context {backend.context_length}")
            conversations = long_chat(backend, target)
            report_first_tokens(backend, conversations)
            report_decoding(backend, args.tokens, not args.no_api)
            report_long_decoding(backend, conversations[-1], args.tokens)


if __name__ == "__main__":
    main()
