"""jslm-chat: flags and environment → settings → engine → Gradio UI → launch.

python app.py            # stabilityai/japanese-stablelm-instruct-beta-7b, fp16 on the GPU
python app.py --demo     # the tiny offline demo model, on CPU, in seconds
python app.py --help     # every flag (each also an environment variable, for Spaces)
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from jslm_chat.server import serve


def main(argv: Sequence[str] | None = None) -> int:
    """Run the app until interrupted; the exit status is 0, or 1 when the model cannot load."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own health checks, one line each
    return serve(argv)


if __name__ == "__main__":
    sys.exit(main())
