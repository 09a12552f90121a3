"""Model presets: lookup by key or hub id, fallback for other models, fitting to a context."""

from __future__ import annotations

from jslm_chat.model.presets import ALPACA_JA_FORMAT, DEFAULT_SYSTEM_PROMPT, LLAMA2_FORMAT, PRESETS, resolve_preset


def test_default_preset_is_instruct_beta_7b():
    preset = resolve_preset("instruct-beta-7b")
    assert preset.model_id == "stabilityai/japanese-stablelm-instruct-beta-7b"
    assert preset.prompt_format == LLAMA2_FORMAT
    assert preset.context_length == 4096
    assert preset.system_prompt == DEFAULT_SYSTEM_PROMPT


def test_presets_found_by_hub_id_case_insensitively():
    assert resolve_preset("StabilityAI/japanese-stablelm-instruct-gamma-7b").prompt_format == ALPACA_JA_FORMAT
    assert resolve_preset("stabilityai/japanese-stablelm-instruct-beta-70b").key == "instruct-beta-70b"
    assert set(PRESETS) == {
        "instruct-beta-7b",
        "instruct-ja_vocab-beta-7b",
        "instruct-beta-70b",
        "instruct-gamma-7b",
    }


def test_local_directory_and_other_ids_use_the_llama2_format(tmp_path):
    local = resolve_preset(str(tmp_path / "my-model"))
    assert local.prompt_format == LLAMA2_FORMAT
    assert local.model_id == str(tmp_path / "my-model")
    assert local.display_name == "my-model"
    other = resolve_preset("someone/llama-2-7b-chat-ja")
    assert other.prompt_format == LLAMA2_FORMAT
    assert other.system_prompt == DEFAULT_SYSTEM_PROMPT


def test_fitting_to_a_small_context_shrinks_the_reply_default():
    preset = PRESETS["instruct-beta-7b"].fitted_to_context(256)
    assert preset.context_length == 256
    assert preset.sampling.max_new_tokens == 64
    assert PRESETS["instruct-beta-7b"].fitted_to_context(8192).sampling.max_new_tokens == 512


def test_a_local_copy_named_after_a_known_model_gets_its_preset(tmp_path):
    gamma = resolve_preset(str(tmp_path / "japanese-stablelm-instruct-gamma-7b"))
    assert (gamma.prompt_format, gamma.context_length) == (ALPACA_JA_FORMAT, 32768)
    assert gamma.model_id == str(tmp_path / "japanese-stablelm-instruct-gamma-7b")
    cached = resolve_preset(
        "/root/.cache/huggingface/hub/models--stabilityai--japanese-stablelm-instruct-gamma-7b/snapshots/abc123"
    )
    assert cached.prompt_format == ALPACA_JA_FORMAT
    assert cached.display_name == "Japanese StableLM Instruct Gamma 7B"
    assert resolve_preset(str(tmp_path / "japanese-stablelm-instruct-beta-70b")).prompt_format == LLAMA2_FORMAT
    assert resolve_preset(str(tmp_path / "gamma-notes")).prompt_format == LLAMA2_FORMAT
