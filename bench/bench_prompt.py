"""Time ``PromptBuilder.build`` on long histories with the demo model's tokenizer.

Run: ``python bench/bench_prompt.py``. Each history is N short Japanese exchanges; the budget is
4096 - 512 tokens (the app's default context and max_new_tokens), so only the newest turns fit.
Prints, per format and history length, the best of a few runs and the turns kept.
``--before FILE`` times another version of ``jslm_chat/model/prompt.py`` instead, e.g. the old one::

    git show main:jslm_chat/model/prompt.py > /tmp/prompt_before.py
    python bench/bench_prompt.py --before /tmp/prompt_before.py --turns 10 100 1000 3000
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import AutoTokenizer

from jslm_chat import prompt as current_prompt
from jslm_chat.demo_model import SYSTEM_PROMPT, demo_model_dir

BUDGET = 4096 - 512
TURN_COUNTS = (10, 100, 1_000, 3_000, 10_000)
FORMATS = ("llama2", "alpaca_ja")


def load_prompt_module(path: Path | None) -> ModuleType:
    """``jslm_chat.model.prompt``, or the module at ``path`` loaded as part of the package."""
    if path is None:
        return current_prompt
    spec = importlib.util.spec_from_file_location("jslm_chat._prompt_bench", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def history(module: ModuleType, count: int) -> list:
    """``count`` short exchanges, each a little different."""
    return [
        module.Turn(f"{i}番目の質問です。東京の天気はどうですか？", f"{i}番目の回答です。今日は晴れています。")
        for i in range(count)
    ]


def time_build(builder: object, turns: list, repeats: int) -> tuple[float, int]:
    """Best wall time of ``repeats`` builds, and the turns the prompt kept."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        prompt = builder.build(SYSTEM_PROMPT, turns, "京都について教えてください。", budget=BUDGET)
        best = min(best, time.perf_counter() - started)
    return best, prompt.kept_turns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="time this prompt.py instead of the current one")
    parser.add_argument("--turns", type=int, nargs="+", default=list(TURN_COUNTS), help="history lengths")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    args = parser.parse_args()
    module = load_prompt_module(args.before)
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir())
    print(f"prompt module: {args.before or 'jslm_chat/model/prompt.py'}; budget {BUDGET} tokens")
    print(f"{'format':<10} {'turns':>7} {'seconds':>10} {'kept':>5}")
    for name in args.formats:
        builder = module.PromptBuilder(tokenizer, module.get_format(name))
        for count in args.turns:
            turns = history(module, count)
            seconds, kept = time_build(builder, turns, repeats=3 if count <= 1_000 else 1)
            print(f"{name:<10} {count:>7} {seconds:>10.4f} {kept:>5}", flush=True)


if __name__ == "__main__":
    main()
