"""Prompt rendering: Llama-2 and Alpaca-ja formats, control-token safety, turn-aware budget."""

from __future__ import annotations

import pytest

from jslm_chat.presets import ALPACA_JA_PREAMBLE
from jslm_chat.prompt import (
    AlpacaJaFormat,
    Llama2Format,
    PromptBuilder,
    PromptTooLongError,
    Turn,
    get_format,
)

SYSTEM = "あなたは役立つアシスタントです。"


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def test_llama2_text_matches_the_reference_template(llama_tokenizer):
    builder = PromptBuilder(llama_tokenizer, Llama2Format())
    turns = [Turn("こんにちは", "こんにちは！何でも聞いてください。"), Turn(" 東京は？ ", " 日本の首都です。 ")]
    prompt = builder.render(SYSTEM, turns, "京都について教えて")
    assert prompt.text == (
        "<s>[INST] <<SYS>>\nあなたは役立つアシスタントです。\n<</SYS>>\n\n"
        "こんにちは [/INST] こんにちは！何でも聞いてください。 </s>"
        "<s>[INST] 東京は？ [/INST] 日本の首都です。 </s>"
        "<s>[INST] 京都について教えて [/INST] "
    )
    assert prompt.dropped_turns == 0
    assert prompt.kept_turns == 2


def test_llama2_ids_are_one_bos_per_turn_and_eos_after_each_reply(llama_tokenizer):
    builder = PromptBuilder(llama_tokenizer, Llama2Format())
    turns = [Turn("こんにちは", "どうも。")]
    prompt = builder.render(SYSTEM, turns, "ありがとう")
    first = encode(llama_tokenizer, f"[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\nこんにちは [/INST] どうも。 ")
    second = encode(llama_tokenizer, "[INST] ありがとう [/INST] ")
    assert prompt.token_ids == [1, *first, 2, 1, *second]
    assert prompt.token_ids.count(1) == 2
    assert prompt.token_ids.count(2) == 1
    assert prompt.num_tokens == len(prompt.token_ids)


def test_no_system_block_when_system_prompt_is_empty(llama_tokenizer):
    prompt = PromptBuilder(llama_tokenizer, Llama2Format()).render("  ", [], "質問です")
    assert prompt.text == "<s>[INST] 質問です [/INST] "
    assert "<<SYS>>" not in prompt.text


@pytest.mark.parametrize("typed", ["</s>", "<s>", "<unk>", "[INST] </s><s> [/INST]"])
def test_control_tokens_typed_by_users_stay_text(llama_tokenizer, typed):
    builder = PromptBuilder(llama_tokenizer, Llama2Format())
    prompt = builder.render("", [Turn(f"前{typed}後", f"返事{typed}")], f"次{typed}")
    special = {llama_tokenizer.bos_token_id, llama_tokenizer.eos_token_id, llama_tokenizer.unk_token_id}
    counts = {token: prompt.token_ids.count(token) for token in special}
    # Exactly the ids we insert: two BOS, one EOS, and no <unk> at all.
    assert counts == {1: 2, 2: 1, 0: 0}
    assert llama_tokenizer.decode(prompt.token_ids, skip_special_tokens=True).count(typed.strip()) >= 3


def test_budget_drops_oldest_whole_turns_and_keeps_system_and_newest(llama_tokenizer):
    builder = PromptBuilder(llama_tokenizer, Llama2Format())
    turns = [Turn(f"質問{i}です。" * 5, f"回答{i}です。" * 5) for i in range(6)]
    full = builder.render(SYSTEM, turns, "最後の質問")
    budget = full.num_tokens - 1
    prompt = builder.build(SYSTEM, turns, "最後の質問", budget=budget)
    assert prompt.num_tokens <= budget
    assert prompt.dropped_turns == 1
    assert prompt.kept_turns == 5
    assert prompt.token_ids == builder.render(SYSTEM, turns[1:], "最後の質問").token_ids
    assert prompt.text.startswith(f"<s>[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\n{turns[1].user}")
    assert "質問0" not in prompt.text
    assert prompt.text.endswith("[INST] 最後の質問 [/INST] ")


def test_budget_drops_as_few_turns_as_possible(llama_tokenizer):
    builder = PromptBuilder(llama_tokenizer, Llama2Format())
    turns = [Turn(f"質問{i}", f"回答{i}") for i in range(8)]
    only_newest = builder.render(SYSTEM, [], "最後").num_tokens
    with_three = builder.render(SYSTEM, turns[5:], "最後").num_tokens
    prompt = builder.build(SYSTEM, turns, "最後", budget=with_three)
    assert (prompt.dropped_turns, prompt.kept_turns) == (5, 3)
    prompt = builder.build(SYSTEM, turns, "最後", budget=only_newest)
    assert (prompt.dropped_turns, prompt.kept_turns) == (8, 0)


def test_newest_message_that_alone_does_not_fit_is_an_error(llama_tokenizer):
    builder = PromptBuilder(llama_tokenizer, Llama2Format())
    message = "とても長いメッセージです。" * 40
    alone = builder.render(SYSTEM, [], message).num_tokens
    with pytest.raises(PromptTooLongError) as caught:
        builder.build(SYSTEM, [Turn("a", "b")], message, budget=alone - 1)
    error = caught.value
    assert error.num_tokens == alone
    assert error.budget == alone - 1
    assert "長すぎます" in str(error)
    assert "too long" in str(error)
    assert isinstance(error, ValueError)


def test_alpaca_ja_format_matches_the_model_card(llama_tokenizer):
    builder = PromptBuilder(llama_tokenizer, get_format("alpaca_ja"))
    prompt = builder.render(ALPACA_JA_PREAMBLE, [], "日本の首都はどこですか？")
    assert prompt.text == (
        "以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。要求を適切に満たす応答を書きなさい。"
        "\n\n### 指示: \n日本の首都はどこですか？\n\n### 応答: \n"
    )
    assert prompt.token_ids == encode(llama_tokenizer, prompt.text)
    assert llama_tokenizer.bos_token_id not in prompt.token_ids


def test_alpaca_ja_instruction_with_input_matches_the_model_card_example(llama_tokenizer):
    builder = PromptBuilder(llama_tokenizer, get_format("alpaca_ja"))
    message = "与えられたことわざの意味を小学生でも分かるように教えてください。\n\n情けは人のためならず"
    prompt = builder.render(ALPACA_JA_PREAMBLE, [], message)
    # What the card's build_prompt(user_query, inputs) produces for its own example.
    assert prompt.text == (
        "以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。要求を適切に満たす応答を書きなさい。"
        "\n\n### 指示: \n与えられたことわざの意味を小学生でも分かるように教えてください。"
        "\n\n### 入力: \n情けは人のためならず"
        "\n\n### 応答: \n"
    )


def test_alpaca_ja_multi_turn_keeps_earlier_pairs(llama_tokenizer):
    segments = AlpacaJaFormat().segments("前文", [Turn("質問1", "回答1")], "質問2")
    assert [segment.text for segment in segments] == [
        "前文\n\n### 指示: \n質問1\n\n### 応答: \n回答1\n\n### 指示: \n質問2\n\n### 応答: \n"
    ]
    assert not segments[0].bos and not segments[0].eos


def test_unknown_format_is_rejected():
    with pytest.raises(ValueError, match="unknown prompt format"):
        get_format("chatml")
