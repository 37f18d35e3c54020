"""FIRE records in the published layout: parsing, re-parsed scores (the N/10 bug), malformed dialogues, writing."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from silkfire.fire.records import (
    FireDialogue,
    FireRecordError,
    check_record,
    dialogue_from_record,
    read_dialogues,
    write_dialogues,
)
from silkfire.fire.text import (
    feedback_text,
    format_student,
    format_teacher,
    parse_score,
    student_answer,
    student_thought,
)

SAMPLE = Path(__file__).parent / "data" / "fire_sample.json"


@pytest.mark.parametrize("text, score", [
    ("Score: 5.\nFeedback: x", 5),
    ("Score: 5/10.\nFeedback: x", 5),
    ("Score: 10/10.", 10),
    ("Score: 10.\n", 10),
    ("  Score:7 out of 10\nFeedback: 3 things", 7),
    ("Score: none\nFeedback: 9 is wrong", None),  # the integer must be on the Score line
    ("Feedback: no score", None),
    ("Score: 0.", 0),
])
def test_parse_score_first_integer_on_the_score_line(text: str, score: int | None) -> None:
    assert parse_score(text) == score


def test_quality_gate_uses_the_same_parser() -> None:
    from silkfire.quality import fire as quality_fire

    assert quality_fire.parse_score is parse_score and quality_fire.feedback_text is feedback_text


def test_turn_texts_round_trip() -> None:
    student = format_student(" I count. ", "3")
    assert student == "Thought: I count.\nAnswer: 3\n"
    assert (student_thought(student), student_answer(student)) == ("I count.", "3")
    assert student_answer("12") == "12"  # a model ignoring the format is scored on what it said
    teacher = format_teacher(4, "Look again.")
    assert teacher == "Score: 4.\nFeedback: Look again.\n"
    assert parse_score(teacher) == 4 and feedback_text(teacher).strip() == "Look again."
    assert feedback_text("Score: 3.\nLook at the left.").strip() == "Look at the left."


def test_published_sample_reads_and_rescores_the_n_of_10_record() -> None:
    dialogues, rejected = read_dialogues(SAMPLE)
    assert rejected == [] and len(dialogues) == 3
    first, bug, third = dialogues
    assert (first.round, first.scores, first.score_mismatch()) == (3, [5, 8, 10], False)
    assert bug.stored_score == [0, 1] and bug.scores == [5, 10] and bug.score_mismatch()
    assert (bug.split, bug.img_path, bug.human_rating) == ("fire_test", "chartqa_png_two_col_1234.png", [5])
    assert first.question.startswith("<image>\n") and first.groundtruth == "9"
    assert third.responses[1].startswith("Thought: The car parked") and len(third.feedbacks) == 3
    assert bug.feedback_texts == ["You read the bar of the wrong year. Find the label under the bar first.",
                                  "Correct."]


def test_round_trip_is_exact_json_list_and_jsonl(tmp_path: Path) -> None:
    records = json.loads(SAMPLE.read_text())
    dialogues, _ = read_dialogues(SAMPLE)
    assert [d.to_record() for d in dialogues] == records  # stored scores kept as read
    write_dialogues(tmp_path / "out.json", dialogues)
    assert json.loads((tmp_path / "out.json").read_text()) == records
    write_dialogues(tmp_path / "out.jsonl", dialogues, rescore=True)
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["score"] for line in lines] == [[5, 8, 10], [5, 10], [2, 6, 10]]
    assert list(lines[1]) == ["image", "question", "conversations", "groundtruth", "source", "round", "score",
                              "split", "img_path", "human_rating"]


def _sample() -> dict:
    return copy.deepcopy(json.loads(SAMPLE.read_text())[0])


def _break(edit) -> dict:
    record = _sample()
    edit(record)
    return record


@pytest.mark.parametrize("edit, reason", [
    (lambda r: r["conversations"].reverse(), "conversations[0]: role 'teacher', expected 'student'"),
    (lambda r: r["conversations"].pop(), "ends with a student turn"),
    (lambda r: r["conversations"][1].update(role="student"), "conversations[1]: role 'student', expected 'teacher'"),
    (lambda r: r["conversations"][2].update(type="feedback"), "type 'feedback', expected 'response'"),
    (lambda r: r["conversations"][3].update(value="  "), "conversations[3] (teacher): value is blank"),
    (lambda r: r.update(round=2), "field 'round' is 2 but the dialogue has 3 teacher turn(s)"),
    (lambda r: r.update(round="3"), "field 'round' is str, expected an int"),
    (lambda r: r.update(conversations=[]), "field 'conversations' is empty"),
    (lambda r: r.pop("groundtruth"), "field 'groundtruth' is missing"),
    (lambda r: r["question"].update(value=""), "field question.value is blank"),
    (lambda r: r.pop("score"), "field 'score' is missing"),
    (lambda r: r.update(image=""), "field 'image' is blank"),
    (lambda r: r.update(human_rating="5"), "field 'human_rating' is str"),
])
def test_malformed_dialogues_are_rejected_with_a_reason(edit, reason: str) -> None:
    problem = check_record(_break(edit))
    assert problem is not None and reason in problem
    assert check_record(_sample()) is None


def test_file_errors_name_file_record_and_field(tmp_path: Path) -> None:
    good, bad = _sample(), _break(lambda r: r.update(round=7))
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(FireRecordError, match=r"d\.jsonl: record 2: field 'round' is 7"):
        read_dialogues(path)
    dialogues, rejected = read_dialogues(path, skip_invalid=True)
    assert len(dialogues) == 1 and len(rejected) == 1 and "record 2" in rejected[0]


def test_from_turns_builds_a_valid_record_with_parsed_scores() -> None:
    dialogue = FireDialogue.from_turns("images/a.png", "How many?", "2", ["Thought: a\nAnswer: 1\n", "Answer: 2"],
                                       ["Score: 5.\nFeedback: more", "no score here"], "shapes")
    assert dialogue.stored_score == [5, 0] and dialogue.scores == [5, None]
    record = dialogue.to_record()
    assert check_record(record) is None and record["round"] == 2
    assert dialogue_from_record(record).turns == dialogue.turns
    with pytest.raises(ValueError, match="as many responses as feedbacks"):
        FireDialogue.from_turns("i", "q", "a", ["r"], [], "s")


def test_sample_file_fails_the_gate_only_on_its_n_of_10_record(tmp_path: Path) -> None:
    from silkfire.quality.cli import config_from_overrides
    from silkfire.quality.fire import validate_fire

    config = config_from_overrides(["check_images=false", "data_docs=false", "fire.score_agreement=1.0"])
    result = validate_fire(SAMPLE, config, tmp_path / "report")
    assert [(failure.column, failure.lines) for _, failure in result.failures] == [("score__agreement", (2,))]
