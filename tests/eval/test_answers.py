"""Batched greedy generation: answers come back in input order and do not depend on the batch size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from silkfire.eval.answers import generate_answers
from silkfire.io import read_records
from silkfire.models.loading import load_vlm
from silkfire.models.testing import make_test_model, make_test_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_world(tmp_path_factory.mktemp("world"), train_scenes=1, val_scenes=1, test_scenes=2)


@pytest.fixture(scope="module")
def model_and_processor(tmp_path_factory: pytest.TempPathFactory):
    model, processor = load_vlm(make_test_model(tmp_path_factory.mktemp("model") / "m"))
    # An untrained model answers the same token everywhere; large seeded noise makes answers depend on the
    # input, so order and batching mistakes become visible.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model, processor


@pytest.fixture(scope="module")
def records(world: Path) -> list[dict]:
    # MME questions of different lengths, so batches really get left padding
    return read_records(world / "mme.jsonl")[:10] + read_records(world / "open.jsonl")[:2]


def test_batch_size_does_not_change_answers_or_order(model_and_processor, records, world: Path):
    model, processor = model_and_processor
    one = generate_answers(model, processor, records, world, batch_size=1, max_new_tokens=4, progress=False)
    four = generate_answers(model, processor, records, world, batch_size=4, max_new_tokens=4, progress=False)
    assert len(one) == len(records)
    assert len(set(one)) > 2, f"answers do not depend on the input, the test would prove nothing: {one}"
    assert four == one
    # reversed input gives reversed output: answers follow their records
    backwards = generate_answers(model, processor, records[::-1], world, batch_size=5, max_new_tokens=4,
                                 progress=False)
    assert backwards == one[::-1]


def test_answers_are_stripped_text_and_state_is_restored(model_and_processor, records, world: Path):
    model, processor = model_and_processor
    model.train()
    answers = generate_answers(model, processor, records[:3], world, batch_size=2, max_new_tokens=3,
                               progress=False)
    assert all(isinstance(a, str) and a == a.strip() for a in answers)
    assert not any("<image>" in a or "</s>" in a or "<pad>" in a for a in answers)
    assert model.training and processor.tokenizer.padding_side == "right"
    assert generate_answers(model, processor, [], world, progress=False) == []


def test_max_new_tokens_bounds_the_answer(model_and_processor, world: Path):
    model, processor = model_and_processor
    record = read_records(world / "mme.jsonl")[0]
    short = generate_answers(model, processor, [record], world, max_new_tokens=1, progress=False)[0]
    longer = generate_answers(model, processor, [record], world, max_new_tokens=6, progress=False)[0]
    tokenizer = processor.tokenizer
    assert short in {tokenizer.decode([i], skip_special_tokens=True).strip() for i in range(len(tokenizer))}
    assert longer.startswith(short)


def test_blank_like_keeps_size_and_fills_with_the_background(world: Path):
    from PIL import Image

    from silkfire.eval.answers import blank_like

    image = Image.open(world / read_records(world / "mme.jsonl")[0]["image"]).convert("RGB")
    blank = blank_like(image)
    assert blank.size == image.size and blank.mode == image.mode
    assert blank.getcolors() == [(image.width * image.height, (255, 255, 255))]  # the world's background
    assert len(image.getcolors()) > 1  # the scene itself is not blank


def test_blank_images_make_answers_independent_of_the_image(model_and_processor, records, world: Path):
    """Blind mode: the same question about different images gets the same answer (only the text is seen)."""
    model, processor = model_and_processor
    question = records[0]["question"]
    images = sorted({record["image"] for record in read_records(world / "mme.jsonl")})
    same_question = [{"question": question, "image": image} for image in images]
    assert len(same_question) >= 2
    seeing = generate_answers(model, processor, same_question, world, batch_size=2, max_new_tokens=4,
                              progress=False)
    blind = generate_answers(model, processor, same_question, world, batch_size=2, max_new_tokens=4,
                             progress=False, blank_images=True)
    assert len(set(blind)) == 1
    assert seeing != blind or len(set(seeing)) == 1  # a noisy model answers differently when it sees the scenes
