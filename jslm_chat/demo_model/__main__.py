"""CLI: ``python -m jslm_chat.demo_model [--out DIR]`` builds the demo model and prints its folder."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from jslm_chat.demo_model.build import build_demo_model
from jslm_chat.demo_model.cache import demo_model_dir
from jslm_chat.demo_model.recipe import DEFAULT_TRAIN_STEPS


def main(argv: list[str] | None = None) -> int:
    """Build the demo model (into ``--out`` or the cache) and print its folder."""
    parser = argparse.ArgumentParser(
        prog="python -m jslm_chat.demo_model",
        description="Build the tiny offline Japanese demo model and print its folder.",
    )
    parser.add_argument("--out", type=Path, help="folder to build into (default: the cache, reused if built)")
    parser.add_argument("--steps", type=int, default=DEFAULT_TRAIN_STEPS, help="training steps")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    if args.steps < 0:
        parser.error("--steps must be >= 0")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.out is None:
        if (args.steps, args.seed) != (DEFAULT_TRAIN_STEPS, 0):
            parser.error("--steps/--seed need --out (the cache holds the default build only)")
        path = demo_model_dir()
    else:
        build_demo_model(args.out, train_steps=args.steps, seed=args.seed)
        path = args.out
    print(path.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
