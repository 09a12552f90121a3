"""The prepared GPU check runs, so that it has not rotted when a GPU is lent: ``scripts/gpu-check``
on a tiny configuration on the CPU, in a Python where gradio, sentencepiece, fastapi and
bitsandbytes cannot be imported (as on the lent machine's image, which has torch and transformers)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ABSENT = ("gradio", "sentencepiece", "fastapi", "bitsandbytes", "spaces")


def test_the_gpu_check_writes_its_json_and_table_with_every_measure(tmp_path):
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        f"import sys\nfor name in {ABSENT!r}:\n    sys.modules[name] = None\n", encoding="utf-8"
    )
    out = tmp_path / "out"
    environment = {**os.environ, "PYTHONPATH": str(blocker)}
    finished = subprocess.run(
        [str(ROOT / "scripts" / "gpu-check"), str(out), "--tiny", "--skip-compile"],
        env=environment, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-3000:]
    results = json.loads((out / "gpu-check.json").read_text(encoding="utf-8"))
    assert not [name for name, value in results.items() if isinstance(value, dict) and "error" in value]
    assert results["environment"]["configuration"] == "tiny"
    paths = results["decoding"]["paths"]
    assert set(paths) == {"bare generate()", "backend.stream()"}
    assert all(isinstance(figures["tokens_per_s"], float) for figures in paths.values())  # no timing asserted
    assert results["decoding"]["weights_read_per_token_gb"] > 0
    rows = results["first token"]
    assert [round(row["prompt_tokens"], -2) for row in rows] == [500, 2000, 3500]
    assert all(0 < row["reused"] < row["prompt_tokens"] for row in rows)
    assert all(row["reuse_s"] > 0 and row["no_reuse_s"] > 0 for row in rows)
    recovery = results["out-of-memory recovery"]
    assert recovery["out_of_memory_then_retried"] and recovery["simulated"]
    assert (recovery["finish_reason"], recovery["new_tokens"], recovery["pool_entries_after"]) == ("length", 16, 1)
    quantized = results["quantized"]
    assert quantized["4-bit nf4"] == quantized["8-bit"] == {"skipped": "bitsandbytes is not installed"}
    assert quantized["torchao int4 + compile"]["skipped"].startswith("--quantize torchao-int4 needs a CUDA GPU")
    assert "greedy eager = compiled" not in results  # --skip-compile
    table = (out / "gpu-check.md").read_text(encoding="utf-8")
    assert table.startswith("| measure | value |")
    assert "| decoding: backend.stream() | tokens_per_s " in table
