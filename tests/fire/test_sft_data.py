"""Student and teacher SFT sets as FIRE builds them, in the (user, assistant) turns silkfire.train.data renders."""

from __future__ import annotations

import json
from pathlib import Path

from silkfire.fire.prompts import TEACHER_INSTRUCTION
from silkfire.fire.records import read_dialogues
from silkfire.fire.sft_data import build_sft_sets, sample_turns, student_samples, teacher_samples

SAMPLE = Path(__file__).parent / "data" / "fire_sample.json"


def test_student_samples_show_feedback_without_scores() -> None:
    dialogues, _ = read_dialogues(SAMPLE)
    samples = student_samples(dialogues)
    assert [len(s["turns"]) for s in samples] == [3, 2, 3]  # one assistant turn per student response
    first = samples[0]
    assert first["turns"][0] == ["How many objects are preferred by more than 7 people in at least one category?",
                                 dialogues[0].responses[0]]
    assert first["turns"][1] == ["You counted bars instead of objects. Count each object once if any of its bars is "
                                 "above 7.", dialogues[0].responses[1]]
    assert [answer for _, answer in first["turns"]] == dialogues[0].responses
    for sample in samples:
        assert not any("Score" in user or "<image>" in user for user, _ in sample["turns"])
        assert (sample["question"], sample["answer"]) == tuple(sample["turns"][0]) and sample["kind"] == "student"
    assert "Thought: <your reasoning>" in student_samples(dialogues, format_hint=True)[0]["turns"][0][0]


def test_teacher_samples_one_per_turn_with_the_fire_prompt() -> None:
    dialogues, _ = read_dialogues(SAMPLE)
    dialogues[2].turns[1] = type(dialogues[2].turns[1])("teacher", "Feedback: no score line")
    samples, skipped = teacher_samples(dialogues)
    assert len(samples) == 3 + 2 + 3 - 1 and skipped == 1
    sample = samples[0]
    assert sample["id"] == "0/teacher/1" and len(sample["turns"]) == 1
    user, answer = sample["turns"][0]
    assert user == (f"Question: {dialogues[0].question.removeprefix('<image>').strip()}\nGroundtruth: 9\n"
                    f"{TEACHER_INSTRUCTION}\n{dialogues[0].responses[0].strip()}")
    assert answer == dialogues[0].feedbacks[0].strip() and answer.startswith("Score: 5.")
    assert samples[3]["turns"][0][1].startswith("Score: 5/10.")  # the teacher's text as written
    short, _ = teacher_samples(dialogues, instruction="short")
    assert TEACHER_INSTRUCTION not in short[0]["turns"][0][0]


def test_build_writes_both_sets(tmp_path: Path) -> None:
    dialogues, _ = read_dialogues(SAMPLE)
    counts = build_sft_sets(dialogues, tmp_path)
    assert counts == {"student_samples": 3, "student_turns": 8, "teacher_samples": 8, "teacher_unparsable_skipped": 0}
    lines = [json.loads(line) for line in (tmp_path / "teacher.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and sample_turns(lines[0])[0][1].startswith("Score: 5.")


def test_the_trainer_renders_every_assistant_turn_as_an_answer(fire_world: Path, fire_model: Path) -> None:
    from silkfire.models.loading import load_vlm
    from silkfire.train.data import IGNORE_INDEX, conversation_pieces, encode_sft_records

    _, processor = load_vlm(fire_model)
    dialogues, _ = read_dialogues(SAMPLE)
    sample = student_samples(dialogues)[0]
    pieces = conversation_pieces(processor, sample_turns(sample))
    answers = [text for text, is_answer in pieces if is_answer]
    assert len(answers) == 3 and all(response.strip() in answer for response, answer in
                                     zip(dialogues[0].responses, answers))
    # teacher samples are single turn: the existing encoder trains them as they are
    teachers, _ = teacher_samples(dialogues, instruction="short")
    records = [{**t, "image": "images/train-000000.png"} for t in teachers[:2]]
    encoded = encode_sft_records(records, processor, fire_world, progress=False)
    assert len(encoded) == 2 and all(int((labels != IGNORE_INDEX).sum()) > 3 for labels in encoded.labels)
