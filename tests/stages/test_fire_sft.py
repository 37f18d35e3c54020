"""The FIRE training stages' data rules: which student turns carry the loss, the held-out split, mixed SFT records,
and multi-turn samples with per-turn loss flags through silkfire.train.data (labels only on the trained turns)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from silkfire.fire.records import FireDialogue
from silkfire.fire.text import format_student, format_teacher
from silkfire.fire.role_training import mix_records, split_dialogues, student_set, trained_turns
from silkfire.train.data import IGNORE_INDEX, encode_sft_records, record_turns


@pytest.fixture(scope="module")
def fire_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from silkfire.models.testing import make_test_world

    return make_test_world(tmp_path_factory.mktemp("world"), train_scenes=3, val_scenes=1, test_scenes=1)


@pytest.fixture(scope="module")
def fire_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from silkfire.models.testing import make_test_model

    return make_test_model(tmp_path_factory.mktemp("model"))


def dialogue(scores: list[int], image: str = "images/train-000000.png") -> FireDialogue:
    responses = [format_student("I look.", f"{index}") for index in range(len(scores))]
    feedbacks = [format_teacher(score, "Look again." if score < 8 else "Correct.") for score in scores]
    return FireDialogue.from_turns(image, "How many circles are there?", "2", responses, feedbacks, "shapes")


@pytest.mark.parametrize("scores, improving", [
    ([10], [True]),
    ([3, 10], [False, True]),
    ([3, 5, 10], [False, True, True]),
    ([5, 5], [False, False]),        # ignored feedback: not trained
    ([5, 3, 6], [False, False, True]),
    ([9, 10], [True, True]),
])
def test_trained_turns(scores: list[int], improving: list[bool]) -> None:
    assert trained_turns(scores, "improving", 8) == improving
    assert trained_turns(scores, "all", 8) == [True] * len(scores)
    with pytest.raises(ValueError, match="student_turns"):
        trained_turns(scores, "some", 8)


def test_student_set_flags_turns_and_leaves_out_dialogues_with_nothing_to_learn() -> None:
    dialogues = [dialogue([3, 10]), dialogue([5, 5]), dialogue([10])]
    samples, left_out = student_set(dialogues, "improving", 8)
    assert left_out == 1 and [s["train_turns"] for s in samples] == [[False, True], [True]]
    assert samples[0]["turns"][1][0] == "Look again."  # the feedback text only, never the score
    everything, none_left = student_set(dialogues, "all", 8)
    assert none_left == 0 and len(everything) == 3


def test_split_dialogues_is_seeded_and_disjoint() -> None:
    items = [dialogue([10], image=f"images/train-{i:06d}.png") for i in range(40)]
    train, val = split_dialogues(items, 0.1, seed=3)
    assert len(val) == 4 and len(train) == 36
    assert {d.image for d in train}.isdisjoint({d.image for d in val})
    assert [d.image for d in val] == [d.image for d in split_dialogues(items, 0.1, seed=3)[1]]
    assert split_dialogues(items, 0.0, 0)[1] == []
    with pytest.raises(ValueError, match="val_fraction"):
        split_dialogues(items, 1.0, 0)


def test_mix_records_takes_the_named_families(fire_world: Path) -> None:
    mixed = mix_records(fire_world / "train.jsonl", ["mme"], 10, seed=0)
    assert len(mixed) == 10 and {r["family"] for r in mixed} == {"mme"}
    assert mix_records(fire_world / "train.jsonl", ["mme"], 0, seed=0) == []
    with pytest.raises(ValueError, match="mix_families"):
        mix_records(fire_world / "train.jsonl", ["nope"], 3, seed=0)


def test_mix_records_writes_dialogue_families_as_right_student_turns(fire_world: Path) -> None:
    from silkfire.fire.text import student_answer, student_thought
    from silkfire.io import read_records
    from silkfire.train.data import record_turns

    truth = {r["id"]: r for r in read_records(fire_world / "train.jsonl")}
    mixed = mix_records(fire_world / "train.jsonl", ["mme", "open", "probe"], 8, seed=1,
                        weights={"mme": 1, "open": 2, "probe": 1}, student_families=["open", "probe"])
    families = [truth[r["id"]]["family"] for r in mixed]
    assert families.count("open") == 4 and families.count("mme") == 2 and 1 <= families.count("probe") <= 2
    for record in mixed:
        source = truth[record["id"]]
        ((user, reply, trained),) = record_turns(record)
        if source["family"] == "mme":
            assert (user, reply) == (source["question"], source["answer"])  # yes/no records stay as they are
        else:
            assert user == source["question"] and trained and record["kind"] == "student"
            assert student_answer(reply) == str(source["answer"]) and student_thought(reply)
    assert mixed == mix_records(fire_world / "train.jsonl", ["mme", "open", "probe"], 8, seed=1,
                                weights={"mme": 1, "open": 2, "probe": 1}, student_families=["open", "probe"])


def test_record_turns_reads_both_layouts() -> None:
    assert record_turns({"question": "Q", "answer": 3}) == [("Q", "3", True)]
    sample = {"turns": [["Q", "A1"], ["F", "A2"]], "train_turns": [False, True]}
    assert record_turns(sample) == [("Q", "A1", False), ("F", "A2", True)]
    assert record_turns({"turns": [["Q", "A"]]}) == [("Q", "A", True)]
    with pytest.raises(ValueError, match="one flag per turn"):
        record_turns({"id": "x", "turns": [["Q", "A"]], "train_turns": [True, False]})


def test_untrained_turns_stay_in_context_without_labels(fire_world: Path, fire_model: Path) -> None:
    from silkfire.models.loading import load_vlm

    _, processor = load_vlm(fire_model)
    image = "images/train-000000.png"
    turns = [["How many circles are there?", "Answer: 7"], ["Too many; look again.", "Answer: 2"]]
    flagged = encode_sft_records([{"image": image, "turns": turns, "train_turns": [False, True]}], processor,
                                 fire_world, progress=False)
    full = encode_sft_records([{"image": image, "turns": turns}], processor, fire_world, progress=False)
    assert torch.equal(flagged.input_ids[0], full.input_ids[0])  # same context
    trained = flagged.labels[0] != IGNORE_INDEX
    assert 0 < int(trained.sum()) < int((full.labels[0] != IGNORE_INDEX).sum())
    decoded = processor.tokenizer.decode(flagged.input_ids[0][trained])
    assert "2" in decoded and "7" not in decoded
