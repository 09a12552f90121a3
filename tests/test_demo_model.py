"""The offline demo model: it builds offline, deterministically, once; it loads and speaks Japanese."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, LlamaTokenizer

from jslm_chat import demo_model as dm
from jslm_chat.demo_model import cache, recipe, training
from jslm_chat.demo_model.__main__ import main
from jslm_chat.model.presets import DEFAULT_SYSTEM_PROMPT
from jslm_chat.model.prompt import Llama2Format, PromptBuilder

SYSTEM_BLOCK = f"<<SYS>>\n{DEFAULT_SYSTEM_PROMPT}\n<</SYS>>\n\n"
WEIGHT_AND_TOKENIZER_FILES = (
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
)


def japanese_fraction(text: str) -> float:
    """Share of kana and kanji among the non-space characters."""
    chars = [c for c in text if not c.isspace()]
    japanese = [c for c in chars if "\u3040" <= c <= "\u30ff" or "\u4e00" <= c <= "\u9fff"]
    return len(japanese) / max(len(chars), 1)


def enc(tokenizer: LlamaTokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


@pytest.fixture(scope="module")
def built(demo_model_path: Path) -> Path:
    """The real default build, through the cache (shared with the other test modules)."""
    return demo_model_path


@pytest.fixture(scope="module")
def cache_root(built: Path) -> Path:
    return built.parent


@pytest.fixture(scope="module")
def tokenizer(built: Path) -> LlamaTokenizer:
    return AutoTokenizer.from_pretrained(built)


@pytest.fixture(scope="module")
def model(built: Path) -> LlamaForCausalLM:
    return AutoModelForCausalLM.from_pretrained(built)


def generate(model: LlamaForCausalLM, ids: list[int], **kwargs: object) -> list[int]:
    output = model.generate(torch.tensor([ids]), max_new_tokens=80, **kwargs)
    return output[0, len(ids) :].tolist()


def test_corpus_is_a_few_hundred_japanese_exchanges() -> None:
    pairs = dm.load_corpus()
    assert 150 <= len(pairs) <= 250
    assert len({q for q, _ in pairs}) == len(pairs), "duplicate questions"
    assert japanese_fraction("".join(q + a for q, a in pairs)) > 0.8
    nasake = [a for q, a in pairs if "情けは人のためならず" in q]
    assert nasake and all("自分" in a for a in nasake)  # the kindness comes back to you


def test_corpus_format_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "corpus.txt"
    bad.write_text("# comment\nQ: 質問です。\nA: 答えです。\n\nQ: 答えのない質問\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"corpus\.txt:5:"):
        dm.load_corpus(bad)


def test_built_folder_loads_as_a_llama_chat_model(
    built: Path, tokenizer: LlamaTokenizer, model: LlamaForCausalLM
) -> None:
    for name in (*WEIGHT_AND_TOKENIZER_FILES, "README.md"):
        assert (built / name).is_file(), name
    assert isinstance(model, LlamaForCausalLM)
    assert isinstance(tokenizer, LlamaTokenizer)
    assert model.dtype == torch.float32
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (1, 2, 0)
    generation = model.generation_config
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (1, 2, 0)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 0)
    assert model.config.vocab_size == len(tokenizer) > 1000
    assert tokenizer("こんにちは")["input_ids"][0] == 1  # BOS added by default, as for Llama-2
    assert sorted(tokenizer.all_special_ids) == [0, 1, 2]  # "▁" is a normal piece


def test_tokenizer_round_trips_japanese_and_falls_back_to_bytes(tokenizer: LlamaTokenizer) -> None:
    corpus = dm.CORPUS_PATH.read_text(encoding="utf-8")
    for text in [
        "こんにちは。今日は良い天気ですね！",
        "「情けは人のためならず」の意味は？",
        "価格は1,280円 です。",
        "鬱蒼とした森",
    ]:
        assert tokenizer.decode(enc(tokenizer, text)) == text
    assert "鬱" not in corpus
    pieces = tokenizer.convert_ids_to_tokens(enc(tokenizer, "鬱"))
    assert pieces[-3:] == ["<0xE9>", "<0xAC>", "<0xB1>"]  # UTF-8 bytes of 鬱
    assert tokenizer.unk_token_id not in enc(tokenizer, "鬱蒼とした森で🦊を見た")
    # Control tokens typed as text stay text.
    assert not {0, 1, 2} & set(enc(tokenizer, "文中の</s>と<s>と<unk>"))


def test_open_prompt_is_a_prefix_of_the_finished_turn(tokenizer: LlamaTokenizer) -> None:
    question, answer = dm.load_corpus()[0]
    prompt = enc(tokenizer, f"[INST] {SYSTEM_BLOCK}{question} [/INST] ")
    finished = enc(tokenizer, f"[INST] {SYSTEM_BLOCK}{question} [/INST] {answer} ")
    assert finished[: len(prompt)] == prompt
    samples = dm.training_samples(dm.load_corpus(), tokenizer)
    ids, reply = samples[0]
    assert ids[0] == 1 and ids[-1] == 2 and reply[-1] and not reply[0]
    app_prompt = PromptBuilder(tokenizer, Llama2Format()).render(DEFAULT_SYSTEM_PROMPT, [], question).token_ids
    assert ids[: len(app_prompt)] == app_prompt and reply.index(True) == len(app_prompt)  # trained as the app asks
    assert any(ids.count(1) == 2 for ids, _ in samples)  # some two-turn conversations


def test_demo_model_dir_reuses_the_cache(built: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stamp = (built / "model.safetensors").stat().st_mtime_ns

    def must_not_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(cache, "build_demo_model", must_not_build)
    assert dm.demo_model_dir(cache_root) == built
    assert (built / "model.safetensors").stat().st_mtime_ns == stamp
    assert built.name == f"demo-model-{recipe.build_key()}"
    leftovers = [p.name for p in cache_root.iterdir() if p.name.startswith(f".{built.name}.")]
    assert [name for name in leftovers if not name.endswith(".lock")] == []


def test_demo_model_dir_builds_once_under_a_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def fake_build(out_dir: Path, **kwargs: object) -> None:
        calls.append(out_dir)
        time.sleep(0.3)
        for name in cache.MODEL_FILES:
            (out_dir / name).write_text("{}", encoding="utf-8")

    monkeypatch.setattr(cache, "build_demo_model", fake_build)
    stale = tmp_path / f".demo-model-{recipe.build_key()}.killed.partial"  # from a killed build
    stale.mkdir()
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(dm.demo_model_dir(tmp_path))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(set(results)) == 1
    target = results[0]
    assert calls[0] != target  # built elsewhere, then renamed into place
    assert not stale.exists() and not calls[0].exists()
    (target / "model.safetensors").unlink()  # a damaged cache is rebuilt
    assert dm.demo_model_dir(tmp_path) == target and len(calls) == 2


def test_env_var_sets_the_cache_and_corpus_edits_change_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_build(out_dir: Path, **kwargs: object) -> None:
        for name in cache.MODEL_FILES:
            (out_dir / name).touch()

    monkeypatch.setattr(cache, "build_demo_model", fake_build)
    monkeypatch.setenv("JSLM_CACHE_DIR", str(tmp_path / "env-cache"))
    assert dm.demo_model_dir().parent == tmp_path / "env-cache"
    key = recipe.build_key()
    edited = tmp_path / "corpus.txt"
    edited.write_bytes(dm.CORPUS_PATH.read_bytes() + "\nQ: 追加の質問\nA: 追加の答え。\n".encode())
    assert recipe.build_key(corpus_path=edited) != key
    assert recipe.build_key(train_steps=5) != recipe.build_key()


def test_build_is_deterministic_and_leaves_the_caller_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    rng, threads = torch.random.get_rng_state(), torch.get_num_threads()
    with caplog.at_level(logging.INFO, logger="jslm_chat.demo_model"):
        dm.build_demo_model(tmp_path / "a", train_steps=3)
    assert any("Built the demo model in" in r.getMessage() for r in caplog.records)
    assert torch.equal(torch.random.get_rng_state(), rng) and torch.get_num_threads() == threads
    assert main(["--out", str(tmp_path / "b"), "--steps", "3"]) == 0  # the CLI
    assert capsys.readouterr().out.strip() == str((tmp_path / "b").resolve())
    for name in WEIGHT_AND_TOKENIZER_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_greedy_and_sampled_replies_are_japanese(tokenizer: LlamaTokenizer, model: LlamaForCausalLM) -> None:
    prompt = [1, *enc(tokenizer, f"[INST] {SYSTEM_BLOCK}情けは人のためならず、とはどういう意味ですか？ [/INST] ")]
    greedy = generate(model, prompt, do_sample=False)
    assert greedy[-1] == 2  # the reply ends with EOS
    text = tokenizer.decode(greedy, skip_special_tokens=True)
    assert len(text) > 10 and japanese_fraction(text) > 0.8, text
    torch.manual_seed(0)
    sampled = tokenizer.decode(generate(model, prompt, do_sample=True, temperature=0.7), skip_special_tokens=True)
    assert len(sampled) > 10 and japanese_fraction(sampled) > 0.7, sampled
    # A later turn (no system block, after an EOS and a new BOS) gets a Japanese reply too.
    history = [1, *enc(tokenizer, f"[INST] {SYSTEM_BLOCK}こんにちは。 [/INST] こんにちは！ "), 2]
    second = [*history, 1, *enc(tokenizer, "[INST] 日本の首都はどこですか？ [/INST] ")]
    text = tokenizer.decode(generate(model, second, do_sample=False), skip_special_tokens=True)
    assert len(text) > 5 and japanese_fraction(text) > 0.7, text


def test_training_brought_the_loss_far_below_an_untrained_model(
    tokenizer: LlamaTokenizer, model: LlamaForCausalLM
) -> None:
    batches = training.batches(dm.training_samples(dm.load_corpus(), tokenizer), 64)

    def corpus_loss(m: LlamaForCausalLM) -> float:
        with torch.no_grad():
            return sum(training.reply_loss(m, *b).item() for b in batches) / len(batches)

    torch.manual_seed(0)
    untrained = LlamaForCausalLM(model.config).eval()
    trained_loss, untrained_loss = corpus_loss(model), corpus_loss(untrained)
    assert untrained_loss > 6.0  # about ln(vocab size)
    assert trained_loss < 1.0 and trained_loss < untrained_loss / 5
