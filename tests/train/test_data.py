"""Encoding SFT records: labels only on the assistant's answer, padding/collation, record selection."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from silkfire.images import UnsafeImage
from silkfire.io import read_records
from silkfire.models.loading import load_vlm
from silkfire.models.testing import make_test_model, make_test_world
from silkfire.train.data import IGNORE_INDEX, SFTCollator, encode_sft_records, select_records, styled_answers


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_world(tmp_path_factory.mktemp("world"), train_scenes=3, val_scenes=1, test_scenes=1)


@pytest.fixture(scope="module")
def processor(tmp_path_factory: pytest.TempPathFactory):
    return load_vlm(make_test_model(tmp_path_factory.mktemp("model") / "m"))[1]


def test_only_assistant_tokens_carry_labels(world: Path, processor):
    records = read_records(world / "train.jsonl")
    data = encode_sft_records(records, processor, world, progress=False)
    tokenizer = processor.tokenizer
    assert len(data) == len(records)
    for index, record in enumerate(records):
        ids, labels = data.input_ids[index], data.labels[index]
        assert ids.shape == labels.shape
        supervised = labels != IGNORE_INDEX
        # labels equal the ids where supervised, and supervision is one contiguous block at the end
        assert torch.equal(labels[supervised], ids[supervised])
        first = int(supervised.nonzero()[0])
        assert supervised[first:].all() and not supervised[:first].any()
        # ... which is exactly " <answer></s>"
        assert tokenizer.decode(ids[first:]) == f" {record['answer']}</s>"
        # the prompt (with <s>, the 9 image tokens and the question) carries no label
        assert ids[0] == tokenizer.bos_token_id
        assert int((ids == processor.image_token_id).sum()) == 9
        assert not supervised[ids == processor.image_token_id].any()
        assert record["question"] in tokenizer.decode(ids[:first])


def test_images_are_encoded_once_per_scene(world: Path, processor):
    records = read_records(world / "train.jsonl")
    data = encode_sft_records(records, processor, world, progress=False)
    assert data.pixel_values.shape == (len({r["image"] for r in records}), 3, 48, 48)
    first, second = data[0], data[1]
    assert records[0]["image"] == records[1]["image"]
    assert torch.equal(first["pixel_values"], second["pixel_values"])


def test_collator_pads_right_with_ignored_labels(world: Path, processor):
    records = read_records(world / "train.jsonl")
    describe = next(i for i, r in enumerate(records) if r["category"] == "describe")
    yes_no = next(i for i, r in enumerate(records) if r["family"] == "mme")
    data = encode_sft_records(records, processor, world, progress=False)
    batch = SFTCollator(processor.tokenizer.pad_token_id)([data[yes_no], data[describe]])
    short = len(data.input_ids[yes_no])
    assert batch["input_ids"].shape[1] == len(data.input_ids[describe]) > short
    assert batch["attention_mask"][0, :short].all() and not batch["attention_mask"][0, short:].any()
    assert (batch["input_ids"][0, short:] == processor.tokenizer.pad_token_id).all()
    assert (batch["labels"][0, short:] == IGNORE_INDEX).all()
    assert batch["pixel_values"].shape == (2, 3, 48, 48)


def test_missing_image_names_the_path(tmp_path: Path, processor):
    records = [{"image": "images/nope.png", "question": "Is there a red circle?", "answer": "No"}]
    with pytest.raises(UnsafeImage, match="nope.png.*file not found"):
        encode_sft_records(records, processor, tmp_path, progress=False)


def test_select_records_filters_caps_and_is_seeded():
    records = [{"id": i, "family": "mme" if i % 3 else "open"} for i in range(300)]
    picked = select_records(records, ["mme"], 50, seed=1)
    assert len(picked) == 50 and all(r["family"] == "mme" for r in picked)
    assert picked == select_records(records, ["mme"], 50, seed=1)
    assert picked != select_records(records, ["mme"], 50, seed=2)
    assert len(select_records(records, None, None, seed=0)) == 300
    weighted = select_records(records, None, 100, seed=0, family_weights={"mme": 1, "open": 3})
    assert sum(r["family"] == "open" for r in weighted) == 75
    with pytest.raises(ValueError, match="no records"):
        select_records(records, ["probe"], None, seed=0)


def test_explained_answers_open_with_the_answer_and_train_on_the_rationale(world: Path, processor):
    records = read_records(world / "train.jsonl")
    explained = styled_answers(records, "explained")
    assert styled_answers(records, "plain") == records
    for before, after in zip(records, explained):
        if before.get("rationale"):
            assert after["answer"] == f"{before['answer']}, {before['rationale']}."
            # MME's parser reads the first 4 characters: the answer must still open the reply
            assert after["answer"].lower()[:4].startswith(before["answer"].lower())
        else:
            assert after == before
    assert sum(bool(r.get("rationale")) for r in records) > 0
    data = encode_sft_records([r for r in explained if r.get("rationale")][:4], processor, world, progress=False)
    for ids, labels, record in zip(data.input_ids, data.labels, [r for r in explained if r.get("rationale")][:4]):
        trained = processor.tokenizer.decode(ids[labels != IGNORE_INDEX], skip_special_tokens=True)
        assert trained.strip() == record["answer"]
    with pytest.raises(ValueError, match="answer style"):
        styled_answers(records, "verbose")


def test_multi_turn_packing_keeps_every_answer_and_splits_pairs(world: Path, processor):
    from silkfire.train.data import group_conversations

    records = read_records(world / "train.jsonl")
    conversations = group_conversations(records, 8, seed=0)
    assert sorted(r["id"] for c in conversations for r in c) == sorted(r["id"] for r in records)
    assert all(1 <= len(c) <= 8 and len({r["image"] for r in c}) == 1 for c in conversations)
    # the Yes and the No question of an MME pair never share a conversation
    for conversation in conversations:
        keys = [(r["family"], r["category"]) for r in conversation if r["family"] == "mme"]
        assert len(keys) == len(set(keys))
    assert group_conversations(records, 8, seed=0) == conversations

    data = encode_sft_records(records, processor, world, progress=False, turns_per_sample=8)
    assert len(data) == len(conversations)
    tokenizer = processor.tokenizer
    for index, conversation in enumerate(conversations):
        ids, labels = data.input_ids[index], data.labels[index]
        assert int((ids == processor.image_token_id).sum()) == 9  # one image per conversation
        supervised = tokenizer.decode(labels[labels != IGNORE_INDEX])
        assert supervised == "".join(f" {r['answer']}</s>" for r in conversation)
        # the full sample is the chat template's rendering of the conversation
        text = tokenizer.decode(ids).replace("<image>" * 9, "<image>")
        assert text.startswith("<s>USER: <image>\n" + conversation[0]["question"] + " ASSISTANT:")
        assert text.count(" USER: ") == len(conversation) - 1
