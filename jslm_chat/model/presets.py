"""Model presets: hub id, prompt format, context length, system prompt and sampling defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jslm_chat.model.params import SETTINGS, GenerationParams

LLAMA2_FORMAT = "llama2"
ALPACA_JA_FORMAT = "alpaca_ja"

DEFAULT_SYSTEM_PROMPT = "あなたは役立つアシスタントです。"
ALPACA_JA_PREAMBLE = (
    "以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。要求を適切に満たす応答を書きなさい。"
)


LLAMA2_SAMPLING = GenerationParams(max_new_tokens=512, temperature=0.7, top_p=0.95, top_k=50, repetition_penalty=1.1)


@dataclass(frozen=True)
class ModelPreset:
    """Everything the app needs to know about a model besides its weights."""

    key: str
    model_id: str
    display_name: str
    prompt_format: str
    context_length: int
    system_prompt: str
    sampling: GenerationParams

    @property
    def public_id(self) -> str:
        """The model's name as shown to users and in exports: a hub id, or a local folder's name (never its path)."""
        path = Path(self.model_id).expanduser()
        return path.name if path.is_absolute() or path.exists() or self.model_id.startswith(".") else self.model_id

    def fitted_to_context(self, context_length: int) -> ModelPreset:
        """This preset for a model whose window is ``context_length`` tokens (a quarter for the reply)."""
        budget = max(1, context_length // 4)
        sampling = dataclasses.replace(self.sampling, max_new_tokens=min(self.sampling.max_new_tokens, budget))
        return dataclasses.replace(self, context_length=context_length, sampling=sampling)

    def default_settings(self) -> dict[str, Any]:
        """The starting value of every setting (:data:`~jslm_chat.model.params.SETTINGS`) for this model."""
        values = {"system_prompt": self.system_prompt, **dataclasses.asdict(self.sampling)}
        return {spec.name: values[spec.name] for spec in SETTINGS}


def _llama2_preset(key: str, model_id: str, display_name: str) -> ModelPreset:
    """A Llama-2-based beta model: ``[INST]`` format, 4096 tokens, the default system prompt."""
    return ModelPreset(
        key=key,
        model_id=model_id,
        display_name=display_name,
        prompt_format=LLAMA2_FORMAT,
        context_length=4096,
        system_prompt=DEFAULT_SYSTEM_PROMPT,
        sampling=LLAMA2_SAMPLING,
    )


PRESETS: dict[str, ModelPreset] = {
    preset.key: preset
    for preset in (
        _llama2_preset(
            "instruct-beta-7b",
            "stabilityai/japanese-stablelm-instruct-beta-7b",
            "Japanese StableLM Instruct Beta 7B",
        ),
        _llama2_preset(
            "instruct-ja_vocab-beta-7b",
            "stabilityai/japanese-stablelm-instruct-ja_vocab-beta-7b",
            "Japanese StableLM Instruct JA-Vocab Beta 7B",
        ),
        _llama2_preset(
            "instruct-beta-70b",
            "stabilityai/japanese-stablelm-instruct-beta-70b",
            "Japanese StableLM Instruct Beta 70B",
        ),
        ModelPreset(
            key="instruct-gamma-7b",
            model_id="stabilityai/japanese-stablelm-instruct-gamma-7b",
            display_name="Japanese StableLM Instruct Gamma 7B",
            prompt_format=ALPACA_JA_FORMAT,
            context_length=32768,
            system_prompt=ALPACA_JA_PREAMBLE,
            sampling=dataclasses.replace(LLAMA2_SAMPLING, temperature=1.0, top_p=0.95, repetition_penalty=1.05),
        ),
    )
}

DEFAULT_PRESET_KEY = "instruct-beta-7b"


def resolve_preset(model: str) -> ModelPreset:
    """Find the preset for a preset key, a hub id or a local directory.

    A known key or hub id gets its own preset (case-insensitive). A local copy whose path names a
    known model (``…/japanese-stablelm-instruct-gamma-7b``, or the hub cache's
    ``models--stabilityai--japanese-stablelm-instruct-gamma-7b/…``) gets that model's preset. Any
    other directory or id is treated as a Llama-2 chat model (the beta prompt format). The engine
    fits the context length to the model's config once loaded.
    """
    wanted = model.strip().rstrip("/")
    for preset in PRESETS.values():
        if wanted.lower() in (preset.key.lower(), preset.model_id.lower()):
            return preset
    path_parts = {part.lower() for part in Path(wanted).parts} | {
        part.lower().split("--")[-1] for part in Path(wanted).parts
    }
    known = [preset for preset in PRESETS.values() if preset.model_id.split("/")[-1].lower() in path_parts]
    base = known[0] if known else PRESETS[DEFAULT_PRESET_KEY]
    name = base.display_name if known else Path(wanted).expanduser().name or wanted
    return dataclasses.replace(base, key=wanted, model_id=wanted, display_name=name)
