"""In-process (transformers) vs vLLM on the same model, same workload, one run.

    python bench/bench_backends.py              # the demo model (tiny: per-token overheads dominate)
    python bench/bench_backends.py --wide       # a random Llama 512 wide, 8 layers, 4,096 context
    python bench/bench_backends.py --app        # also: 8 chats through the app (/chat and /v1) vs direct to vLLM
    python bench/bench_backends.py --app-only   # only that
    python bench/bench_backends.py --model DIR --vllm-url http://127.0.0.1:8000   # a running server

Prints, for each backend: single-stream tokens/s; aggregate tokens/s with 1, 4 and 8 concurrent
chats; time to first token at turn 1 and turn 10 of a long chat (history kept, so turn 10's
prompt is ~5/6 of the window; median of 3 chats); Stop → idle (vLLM: ``vllm:num_requests_running`` back to 0;
in-process: the generation thread gone). Replies run to their full length (``ignore_eos``) so
every run measures the same tokens. vLLM's environment is ``$JSLM_VLLM_PYTHON`` or ``.venv-vllm``,
as for the tests. Asserts nothing. The two backends take turns on the CPU, never both at once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from vllm_server import VllmServer, free_port, vllm_python  # noqa: E402 - the tests' server launcher

from jslm_chat.backends.vllm import VllmBackend  # noqa: E402
from jslm_chat.model.backend import Backend, Conversation  # noqa: E402
from jslm_chat.model.params import GenerationParams  # noqa: E402
from jslm_chat.model.presets import resolve_preset  # noqa: E402
from jslm_chat.model.prompt import Turn  # noqa: E402

SYSTEM = "あなたは役立つアシスタントです。"
REPLY_TOKENS = 128
CONCURRENCY = (1, 4, 8)
RUNS = 3
CHAT_UNIT = "日本の歴史と文化について詳しく教えてください。"
WIDE = {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 8, "num_attention_heads": 8}


def params(max_new_tokens: int, seed: int, *, ignore_eos: bool = True) -> GenerationParams:
    return GenerationParams(max_new_tokens, 0.7, 0.95, 50, 1.1, seed, ignore_eos=ignore_eos)


def ask(message: str, turns: list[Turn] | None = None) -> Conversation:
    return Conversation(SYSTEM, turns or [], message)


def run_reply(backend: Backend, conversation: Conversation, p: GenerationParams) -> Any:
    reply = backend.stream(conversation, p)
    for _ in reply:
        pass
    return reply


def single_stream(backend: Backend) -> float:
    """Median decoding speed of one reply (tokens/s)."""
    question = ask("日本の四季について教えてください。")
    return statistics.median(run_reply(backend, question, params(256, s)).tokens_per_second for s in range(RUNS))


def concurrent(backend: Backend, chats: int, ignore_eos: bool = True) -> tuple[float, list[str]]:
    """Wall seconds for ``chats`` concurrent replies (seeds 0…), and their texts."""
    started = time.perf_counter()
    with ThreadPoolExecutor(chats) as pool:
        replies = list(
            pool.map(
                lambda i: run_reply(backend, ask(question(i)), params(REPLY_TOKENS, i, ignore_eos=ignore_eos)),
                range(chats),
            )
        )
    return time.perf_counter() - started, [reply.text for reply in replies]


def question(i: int) -> str:
    return f"質問{i}: 京都のおすすめは？"


def aggregate(backend: Backend, chats: int) -> float:
    """Tokens per second over all of ``chats`` concurrent replies of REPLY_TOKENS tokens."""
    seconds, _ = concurrent(backend, chats)
    return chats * REPLY_TOKENS / seconds


def long_chat(backend: Backend, chat: int, turns: int = 10) -> list[tuple[int, float]]:
    """Prompt tokens and time to first token of each turn of one chat, history growing each turn."""
    unit_tokens = len(backend.tokenizer.encode(CHAT_UNIT, add_special_tokens=False))
    repeats = max(1, (backend.context_length // 12 - REPLY_TOKENS - 10) // unit_tokens)
    history: list[Turn] = []
    figures = []
    for turn in range(1, turns + 1):
        message = f"{chat}-{turn}番目の質問です。" + CHAT_UNIT * repeats
        reply = run_reply(backend, ask(message, history), params(REPLY_TOKENS, turn))
        figures.append((reply.prompt.num_tokens, reply.seconds_to_first_token or 0.0))
        history.append(Turn(message, reply.text))
    return figures


def first_tokens(backend: Backend) -> dict[int, tuple[int, float]]:
    """Turn 1 and turn 10: prompt tokens and median time to first token over RUNS different chats."""
    chats = [long_chat(backend, chat) for chat in range(RUNS)]
    return {turn: (chats[0][turn - 1][0], statistics.median(chat[turn - 1][1] for chat in chats)) for turn in (1, 10)}


def stop_to_idle(backend: Backend, idle: Callable[[], bool]) -> float:
    """Median seconds from stopping a reply (from another thread) until ``idle()``."""
    timings = []
    for seed in range(RUNS):
        reply = backend.stream(ask("長い話をしてください。"), params(1000, seed))
        consumer = threading.Thread(target=lambda r=reply: [None for _ in r])
        consumer.start()
        while reply.new_tokens < 20:
            time.sleep(0.001)
        started = time.perf_counter()
        reply.stop()
        while not idle():
            time.sleep(0.001)
        timings.append(time.perf_counter() - started)
        consumer.join()
    return statistics.median(timings)


def measure(name: str, backend: Backend, idle: Callable[[], bool]) -> dict[str, Any]:
    print(f"[{name}] measuring ...", flush=True)
    figures: dict[str, Any] = {"single": single_stream(backend)}
    for chats in CONCURRENCY:
        figures[f"x{chats}"] = aggregate(backend, chats)
    figures["chat"] = first_tokens(backend)
    figures["stop"] = stop_to_idle(backend, idle)
    return figures


def report(title: str, results: dict[str, dict[str, Any]]) -> None:
    names = list(results)
    print(f"\n{title}\n{'':40s}" + "".join(f"{name:>17s}" for name in names))

    def row(label: str, value: Callable[[dict[str, Any]], str]) -> None:
        print(f"{label:40s}" + "".join(f"{value(results[name]):>17s}" for name in names))

    row("single stream, tokens/s", lambda f: f"{f['single']:.1f}")
    for chats in CONCURRENCY:
        row(f"{chats} concurrent chats, tokens/s (total)", lambda f, c=chats: f"{f[f'x{c}']:.1f}")
    row("  4 chats vs 1", lambda f: f"{f['x4'] / f['x1']:.2f}x")
    row("  8 chats vs 1", lambda f: f"{f['x8'] / f['x1']:.2f}x")
    row("first token, turn 1: ms (prompt tokens)", lambda f: f"{f['chat'][1][1] * 1000:.0f} ({f['chat'][1][0]})")
    row("first token, turn 10: ms (prompt tokens)", lambda f: f"{f['chat'][10][1] * 1000:.0f} ({f['chat'][10][0]})")
    row("  turn 10 vs turn 1", lambda f: f"{f['chat'][10][1] / f['chat'][1][1]:.1f}x")
    row("Stop -> idle, ms", lambda f: f"{f['stop'] * 1000:.0f}")


def in_process(model: Path) -> tuple[Backend, Callable[[], bool]]:
    """The in-process backend on ``model`` (float32, CPU), and whether its generation thread is gone."""
    from jslm_chat.backends.inprocess.loading import load_inprocess_backend

    def idle() -> bool:
        return not any(thread.name == "jslm-generate" for thread in threading.enumerate())

    return load_inprocess_backend(str(model), device="cpu", dtype="float32"), idle


def app_overhead(backend: VllmBackend, chats: int = 8, rounds: int = RUNS) -> list[tuple[float, float, float, bool]]:
    """Per round, wall seconds of ``chats`` concurrent streaming chats sent to vLLM directly, through
    ``/chat`` and through the OpenAI-compatible ``/v1``.

    The same seeded requests every way (the APIs have no ``ignore_eos``: replies end at EOS), so
    the work is identical; the last value says whether all the texts matched. The app's clients run
    in processes of their own, as real clients (browsers, scripts) do.
    """
    from api_client import ClientProcess

    from jslm_chat.server import create_app, launch
    from jslm_chat.settings import Settings

    settings = Settings(model=backend.served_model, backend="vllm", vllm_url=backend.endpoint.url, port=free_port())
    app, service = create_app(settings, backend=backend)
    _, url, _ = launch(app, service, settings, block=False)
    request = params(REPLY_TOKENS, 0, ignore_eos=False)
    sampling = {name: getattr(request, name) for name in ("max_new_tokens", "temperature", "top_p", "top_k")}
    sampling["repetition_penalty"] = request.repetition_penalty
    chats_sent = [
        {"message": question(i), "history": [], "seed": i, "system_prompt": SYSTEM, **sampling} for i in range(chats)
    ]
    gradio, openai = ClientProcess(url), ClientProcess(url, openai=True)
    figures = []
    try:
        for _ in range(rounds):
            direct, direct_texts = concurrent(backend, chats, ignore_eos=False)
            through_chat, through_v1 = gradio.send(chats_sent), openai.send(chats_sent)
            same = through_chat["texts"] == direct_texts == through_v1["texts"]
            figures.append((direct, through_chat["seconds"], through_v1["seconds"], same))
    finally:
        gradio.close()
        openai.close()
        app.close()
    return figures


def build_wide_model(folder: Path, tokenizer_source: Path) -> Path:
    """A random-weight Llama (``WIDE``, 4,096 positions) with the demo tokenizer, saved once."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), num_key_value_heads=WIDE["num_attention_heads"], max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=0, **WIDE,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def cores(taskset_list: str) -> set[int]:
    """The cores of a ``taskset`` list such as ``0`` or ``0,2-3``."""
    found: set[int] = set()
    for part in taskset_list.split(","):
        first, _, last = part.partition("-")
        found.update(range(int(first), int(last or first) + 1))
    return found


def start_server(model: Path, cpus: str | None = None) -> VllmServer:
    """vLLM on ``model`` (on ``cpus`` only, if given), its whole window, prefill budget with headroom (DESIGN.md §9)."""
    context = json.loads((model / "config.json").read_text())["max_position_embeddings"]
    args = ("--max-model-len", str(context), "--max-num-batched-tokens", str(context + 16), "--max-num-seqs", "16")
    server = VllmServer(vllm_python(), model, Path("/tmp") / "bench-backends-vllm.log", args=args, cpus=cpus)
    print(f"starting vLLM ({server.python}) on {model} ...", flush=True)
    server.start()
    server.wait_ready()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model folder (default: the offline demo model)")
    parser.add_argument("--wide", action="store_true", help="a random Llama 512 wide, 8 layers (built once)")
    parser.add_argument("--vllm-url", help="a vLLM server already serving the model (default: start one)")
    parser.add_argument("--app", action="store_true", help="also 8 chats through the app vs direct to vLLM")
    parser.add_argument("--app-only", action="store_true", help="only the app-vs-direct figure (implies --app)")
    parser.add_argument(
        "--pin-vllm",
        metavar="CPUS",
        help="run vLLM on these cores (taskset list, e.g. 0) and this process, the app and its clients on the others,"
        " as on a GPU host where the engine does not take the front end's CPU",
    )
    parser.add_argument(
        "--torch-threads", type=int, help="torch threads in-process (on a busy machine, 1 avoids stalled OpenMP)"
    )
    args = parser.parse_args()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    from jslm_chat.demo_model import demo_model_dir

    model = args.model or demo_model_dir()
    if args.wide:
        model = build_wide_model(Path.home() / ".cache" / "jslm-chat" / "bench-wide-llama", demo_model_dir())
    server = None if args.vllm_url else start_server(model, cpus=args.pin_vllm)
    if args.pin_vllm:
        os.sched_setaffinity(0, os.sched_getaffinity(0) - cores(args.pin_vllm))
    try:
        backend = VllmBackend.connect(args.vllm_url or server.url, resolve_preset(str(model)), str(model))
        if not args.app_only:
            engine, engine_idle = in_process(model)
            results = {"in-process": measure("in-process", engine, engine_idle)}
            engine.close()
            results["vLLM"] = measure("vLLM", backend, lambda: backend.requests_in_flight() == 0)
            report(f"{model} ({backend.context_length:,} tokens of context)", results)
        if args.app or args.app_only:
            figures = app_overhead(backend)
            print(f"\n8 concurrent streaming chats (up to {REPLY_TOKENS} tokens each, ending at EOS):")
            print("  direct to vLLM | through /chat | through /v1: /chat and /v1 as fractions of direct")
            for direct, chat, v1, same in figures:
                print(
                    f"  {direct:.2f} s | {chat:.2f} s | {v1:.2f} s:"
                    f" {direct / chat:.2f}, {direct / v1:.2f} (same replies: {same})"
                )
            print(f"  median /chat: {statistics.median(d / c for d, c, _, _ in figures):.2f} of direct (goal >= 0.9)")
            print(f"  median /v1: {statistics.median(c / v for _, c, v, _ in figures):.2f} of /chat (goal >= 0.95)")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
