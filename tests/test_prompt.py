"""Prompt rendering: Llama-2 and Alpaca-ja formats, control-token safety, turn-aware budget."""

from __future__ import annotations

import pytest

from jslm_chat.model.presets import ALPACA_JA_PREAMBLE
from jslm_chat.model.prompt import (
    AlpacaJaFormat,
    Llama2Format,
    PromptBuilder,
    PromptInputError,
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


def reference_build(builder, system, turns, message, budget, continuation=""):
    """What trying every number of dropped turns, oldest first, gives (the builder before it searched)."""
    for dropped in range(len(turns) + 1):
        prompt = builder.render(system, turns[dropped:], message, continuation)
        if prompt.num_tokens <= budget:
            return prompt.text, prompt.token_ids, dropped, len(turns) - dropped
    return prompt.num_tokens


PIECES = [
    "こんにちは",
    "東京",
    "です。",
    "  ",
    "\n",
    "\n\n",
    "Hello",
    " world",
    "123",
    "！",
    "情けは",
    "</s>",
    "[INST]",
    "",
]


def random_text(rng, longest):
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, longest)))


@pytest.mark.parametrize("format_name", ["llama2", "alpaca_ja"])
def test_build_equals_trying_every_number_of_dropped_turns(llama_tokenizer, format_name):
    import random

    rng = random.Random(8)
    builder = PromptBuilder(llama_tokenizer, get_format(format_name))
    for _ in range(150):
        system = rng.choice(["", "  ", SYSTEM, random_text(rng, 6)])
        turns = [Turn(random_text(rng, 5), random_text(rng, 8)) for _ in range(rng.randint(0, 9))]
        message = random_text(rng, 5) or "質問"
        continuation = rng.choice(["", "", random_text(rng, 4)])
        lengths = [builder.render(system, turns[d:], message, continuation).num_tokens for d in range(len(turns) + 1)]
        for budget in {rng.choice(lengths) + rng.choice([-1, 0, 1]), min(lengths) - 1, max(lengths) + 5}:
            expected = reference_build(builder, system, turns, message, budget, continuation)
            try:
                prompt = builder.build(system, turns, message, budget=budget, continuation=continuation)
            except PromptTooLongError as error:
                assert error.num_tokens == expected
                continue
            assert (prompt.text, prompt.token_ids, prompt.dropped_turns, prompt.kept_turns) == expected


class CountingTokenizer:
    """The real tokenizer, counting the characters it is given to encode."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.bos_token_id, self.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.bos_token, self.eos_token = tokenizer.bos_token, tokenizer.eos_token
        self.characters = 0

    def __call__(self, text, **kwargs):
        self.characters += len(text)
        return self._tokenizer(text, **kwargs)


@pytest.mark.parametrize("format_name", ["llama2", "alpaca_ja"])
def test_work_does_not_grow_with_the_turns_that_are_dropped(llama_tokenizer, format_name):
    work = []
    for count in (300, 3000):
        tokenizer = CountingTokenizer(llama_tokenizer)
        turns = [Turn(f"質問{i % 10}です。", f"回答{i % 10}です。") for i in range(count)]
        prompt = PromptBuilder(tokenizer, get_format(format_name)).build(SYSTEM, turns, "最後", budget=400)
        assert 0 < prompt.kept_turns < 100
        work.append((tokenizer.characters, prompt.kept_turns))
    # The same turns fit, and encoding them took exactly as much work: none went to the dropped ones.
    assert work[0] == work[1]


def test_llama2_continuation_ends_with_the_partial_reply(llama_tokenizer):
    builder = PromptBuilder(llama_tokenizer, Llama2Format())
    turns = [Turn("こんにちは", "どうも。")]
    prompt = builder.build(SYSTEM, turns, "東京は？", budget=1000, continuation="  東京は日本の")
    assert prompt.text.endswith("</s><s>[INST] 東京は？ [/INST] 東京は日本の")
    assert prompt.text == builder.render(SYSTEM, turns, "東京は？").text + "東京は日本の"
    first = encode(llama_tokenizer, f"[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\nこんにちは [/INST] どうも。 ")
    # The partial reply is encoded in one piece with the open turn; no EOS after it, no new [INST].
    last = encode(llama_tokenizer, "[INST] 東京は？ [/INST] 東京は日本の")
    assert prompt.token_ids == [1, *first, 2, 1, *last]
    assert prompt.token_ids[-1] != llama_tokenizer.eos_token_id


def test_llama2_continuation_without_history_carries_the_system_prompt(llama_tokenizer):
    prompt = PromptBuilder(llama_tokenizer, Llama2Format()).render(SYSTEM, [], "質問", continuation="答えは\n")
    assert prompt.text == f"<s>[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\n質問 [/INST] 答えは\n"


def test_alpaca_ja_continuation_ends_the_open_reply_section(llama_tokenizer):
    builder = PromptBuilder(llama_tokenizer, get_format("alpaca_ja"))
    prompt = builder.build("前文", [Turn("質問1", "回答1")], "質問2", budget=1000, continuation=" 東京は")
    assert prompt.text == "前文\n\n### 指示: \n質問1\n\n### 応答: \n回答1\n\n### 指示: \n質問2\n\n### 応答: \n東京は"
    assert prompt.token_ids == encode(llama_tokenizer, prompt.text)


def test_continuation_that_does_not_fit_is_named(llama_tokenizer):
    builder = PromptBuilder(llama_tokenizer, Llama2Format())
    shortest = builder.render(SYSTEM, [], "質問").num_tokens
    with pytest.raises(PromptTooLongError) as caught:
        builder.build(SYSTEM, [], "質問", budget=shortest + 5, continuation="長い応答です。" * 30)
    assert caught.value.part == "continuation"
    assert "続きを生成するには応答が長すぎます" in str(caught.value)
    assert "The reply is too long to continue" in str(caught.value)


def test_system_prompt_that_alone_does_not_fit_is_named(llama_tokenizer):
    builder = PromptBuilder(llama_tokenizer, Llama2Format())
    system = "とても長いシステムプロンプトです。" * 40
    budget = len(encode(llama_tokenizer, system)) - 1
    with pytest.raises(PromptTooLongError) as caught:
        builder.build(system, [Turn("a", "b")], "短い質問", budget=budget)
    error = caught.value
    assert (error.part, error.budget) == ("system", budget)
    assert error.num_tokens == builder.render(system, [], "短い質問").num_tokens
    assert str(error).startswith("システムプロンプトが長すぎます")
    assert "The system prompt is too long" in str(error)
    assert "message is too long" not in str(error)


def test_message_is_named_when_the_system_prompt_alone_fits(llama_tokenizer):
    builder = PromptBuilder(llama_tokenizer, Llama2Format())
    message = "とても長いメッセージです。" * 40
    with pytest.raises(PromptTooLongError) as caught:
        builder.build(SYSTEM, [], message, budget=len(encode(llama_tokenizer, message)))
    assert caught.value.part == "message"
    assert "The message is too long" in str(caught.value)


@pytest.mark.parametrize("format_name", ["llama2", "alpaca_ja"])
@pytest.mark.parametrize(
    ("field", "name"),
    [("system", "システムプロンプト"), ("history", "会話履歴"), ("message", "メッセージ"), ("continuation", "続き")],
)
def test_unpaired_surrogates_are_a_clear_user_error(llama_tokenizer, format_name, field, name):
    builder = PromptBuilder(llama_tokenizer, get_format(format_name))
    bad = "前\ud800後"
    texts = {"system": SYSTEM, "history": "質問", "message": "質問", "continuation": "答え"}
    texts[field] = bad
    turns = [Turn("最初", "返事"), Turn(texts["history"], "返事")]
    for call in (
        lambda: builder.build(
            texts["system"], turns, texts["message"], budget=1000, continuation=texts["continuation"]
        ),
        lambda: builder.render(texts["system"], turns, texts["message"], texts["continuation"]),
    ):
        with pytest.raises(PromptInputError) as caught:
            call()
        assert caught.value.field == field
        assert isinstance(caught.value, ValueError)
        assert str(caught.value).startswith(f"{name}")
        assert "対になっていないサロゲート" in str(caught.value)
        assert "cannot be encoded (unpaired surrogates)" in str(caught.value)


def test_a_surrogate_in_a_reply_and_paired_characters_are_told_apart(llama_tokenizer):
    builder = PromptBuilder(llama_tokenizer, Llama2Format())
    with pytest.raises(PromptInputError, match="会話履歴"):
        builder.build("", [Turn("質問", "返事\udfff")], "次", budget=1000)
    # A real astral-plane character (an emoji) is a valid code point, not a surrogate pair in str.
    assert "😀" in builder.build("", [Turn("質問😀", "返事")], "次😀", budget=1000).text
