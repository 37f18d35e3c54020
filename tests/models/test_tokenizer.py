"""The world tokenizer: lossless byte-level round trip, special tokens, LLaVA-1.5 chat template."""

from __future__ import annotations

import pytest

from silkfire.models.tokenizer import CHAT_TEMPLATE, train_tokenizer

TEXTS = [
    "Is there a red circle in the image? Please answer yes or no.",
    "How many squares are there?",
    "A small green triangle in the bottom right.",
    "Yes",
    "No",
] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=400)


@pytest.mark.parametrize(
    "text",
    ["Is there a red circle in the image? Please answer yes or no.", "Zebra crossing: 42 ünïcødé ✓", "  two  spaces\nnewline"],
)
def test_round_trip_is_lossless_also_for_unseen_text(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_special_tokens_are_distinct_and_bos_is_added(tokenizer):
    specials = [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id,
                tokenizer.image_token_id]
    assert None not in specials and len(set(specials)) == 5
    assert tokenizer.image_token == "<image>"
    assert tokenizer.convert_tokens_to_ids("<image>") == tokenizer.image_token_id
    # <image> stays one token even glued to text
    ids = tokenizer("x<image>y", add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.image_token_id) == 1
    assert tokenizer("Yes")["input_ids"][0] == tokenizer.bos_token_id
    assert tokenizer.decode(tokenizer("Yes")["input_ids"], skip_special_tokens=True) == "Yes"


def test_vocab_is_learned_from_texts(tokenizer):
    # frequent world words become single tokens; vocab_size is an upper bound
    assert len(tokenizer(" circle", add_special_tokens=False)["input_ids"]) == 1
    assert len(tokenizer) <= 400
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(TEXTS, vocab_size=100)


def test_chat_template_string_and_block_content_render_the_same(tokenizer):
    question = "Is there a red circle in the image? Please answer yes or no."
    as_string = [
        {"role": "user", "content": f"<image>\n{question}"},
        {"role": "assistant", "content": "Yes"},
    ]
    as_blocks = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Yes"}]},
    ]
    expected = f"USER: <image>\n{question} ASSISTANT: Yes</s>"
    assert tokenizer.apply_chat_template(as_string, tokenize=False) == expected
    assert tokenizer.apply_chat_template(as_blocks, tokenize=False) == expected
    prompt = tokenizer.apply_chat_template(as_blocks[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == f"USER: <image>\n{question} ASSISTANT:"
    assert expected.startswith(prompt)


def test_chat_template_block_order_and_system(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        # text block before the image block: the image is still rendered first (LLaVA-1.5 convention)
        {"role": "user", "content": [{"type": "text", "text": "What color?"}, {"type": "image"}]},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "Be brief. USER: <image>\nWhat color? ASSISTANT:"


def test_prompt_and_answer_tokenised_apart_equal_the_whole(tokenizer):
    """Training encodes prompt and answer separately; the split must not change the tokens."""
    prompt = "USER: <image>\nIs there a red circle? ASSISTANT:"
    answer = " Yes</s>"
    whole = tokenizer(prompt + answer)["input_ids"]
    parts = tokenizer(prompt)["input_ids"] + tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert whole == parts
    assert parts[-1] == tokenizer.eos_token_id


def test_saved_tokenizer_reloads_with_template_and_image_token(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert reloaded.chat_template == CHAT_TEMPLATE
    assert reloaded.image_token_id == tokenizer.image_token_id
    assert reloaded("Is there a red circle?")["input_ids"] == tokenizer("Is there a red circle?")["input_ids"]
