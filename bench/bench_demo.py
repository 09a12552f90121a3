"""The in-process backend on the offline demo model (CPU): speed, latency, Stop, prompt building.

    python bench/bench_demo.py

Prints figures; asserts nothing. Replies run to their full length (``ignore_eos``) so that every
run measures the same number of tokens. KV-cache reuse across turns: ``bench_inprocess.py``.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jslm_chat.model.backend import Backend, Conversation
from jslm_chat.model.params import GenerationParams
from jslm_chat.model.prompt import Turn
from jslm_chat.server import load_for
from jslm_chat.settings import Settings

SYSTEM = "あなたは役立つアシスタントです。"
RUNS = 3


def speed(engine: Backend, tokens: int) -> tuple[float, float]:
    """Median time to first token (s) and decoding speed (tokens/s) over RUNS replies."""
    firsts, speeds = [], []
    for seed in range(RUNS):
        reply = engine.stream(Conversation(SYSTEM, [], "日本の四季について教えてください。"), params(tokens, seed))
        for _ in reply:
            pass
        firsts.append(reply.seconds_to_first_token or 0.0)
        speeds.append(reply.tokens_per_second or 0.0)
    return statistics.median(firsts), statistics.median(speeds)


def stop_latency(engine: Backend) -> float:
    """Median seconds from closing a running reply to its generation thread being gone."""
    latencies = []
    for seed in range(RUNS):
        reply = engine.stream(Conversation(SYSTEM, [], "長い話をしてください。"), params(1500, seed))
        consumer = iter(reply)
        for _ in range(20):
            next(consumer)
        started = time.perf_counter()
        consumer.close()
        while any(thread.name == "jslm-generate" for thread in threading.enumerate()):
            time.sleep(0.0005)
        latencies.append(time.perf_counter() - started)
    return statistics.median(latencies)


def prompt_building(engine: Backend, turns: int) -> tuple[float, int, int]:
    """Median ms to build a prompt from ``turns`` long turns with a 512-token reply budget."""
    history = [
        Turn(f"質問{i}：" + "日本の文化について。" * 10, f"回答{i}：" + "とても奥が深いです。" * 10)
        for i in range(turns)
    ]
    timings = []
    for _ in range(RUNS):
        started = time.perf_counter()
        prompt = engine.prepare(Conversation(SYSTEM, history, "最後の質問です。"), max_new_tokens=512)
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings), prompt.num_tokens, prompt.dropped_turns


def params(max_new_tokens: int, seed: int) -> GenerationParams:
    return GenerationParams(max_new_tokens, 0.7, 0.95, 50, 1.1, seed, ignore_eos=True)


def main() -> None:
    started = time.perf_counter()
    engine = load_for(Settings(demo=True))
    seconds = time.perf_counter() - started
    print(f"demo model loaded in {seconds:.1f} s ({engine.runs_on})")
    for tokens in (64, 512):
        first, tokens_per_second = speed(engine, tokens)
        print(
            f"reply of {tokens:4d} tokens: first token after {first * 1000:6.1f} ms, {tokens_per_second:6.1f} tokens/s"
        )
    print(f"Stop: generation thread gone {stop_latency(engine) * 1000:.1f} ms after closing the reply (median)")
    for turns in (10, 40, 160):
        milliseconds, num_tokens, dropped = prompt_building(engine, turns)
        print(f"prompt from {turns:3d} turns: {milliseconds:7.1f} ms, {num_tokens} tokens, {dropped} turns left out")


if __name__ == "__main__":
    main()
