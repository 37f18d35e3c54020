"""Oracle judge rules on constructed scenes (each rule can fail: ratings are checked exactly)."""

from __future__ import annotations

from pathlib import Path

import pytest

from silkfire.vlfeedback.claims import QuestionReader
from silkfire.vlfeedback.oracle_judge import OracleJudge, OracleRules
from silkfire.world.config import WorldConfig
from silkfire.world.scene import Scene, WorldObject

CONFIG = WorldConfig()
# top left: large red circle; middle center: small blue square; bottom right: small blue circle
SCENE = Scene("train-000001", "train", (
    WorldObject("circle", "red", "large", 0, 0),
    WorldObject("square", "blue", "small", 1, 1),
    WorldObject("circle", "blue", "small", 2, 2),
))
FULL = ("A large red circle in the top left, a small blue square in the middle center and a small blue circle "
        "in the bottom right.")


def judge() -> OracleJudge:
    return OracleJudge(CONFIG, {SCENE.scene_id: SCENE})


def rate(prompt: str, response: str) -> tuple[int, int, int, str, str]:
    notes = judge().rate(prompt, response, SCENE)
    return (int(notes["Helpfulness"]["Rating"]), int(notes["Visual Faithfulness"]["Rating"]),
            int(notes["Ethical Considerations"]["Rating"]), notes["Helpfulness"]["Rationale"],
            notes["Visual Faithfulness"]["Rationale"])


def test_correct_description_is_top_rated() -> None:
    h, vf, e, _, why = rate("Describe the image.", FULL)
    assert (h, vf, e) == (5, 5, 5) and "correct" in why


def test_each_invented_object_or_wrong_attribute_costs_faithfulness() -> None:
    extra = FULL[:-1] + " and a large green triangle in the top right."
    h, vf, _, _, why = rate("Describe the image.", extra)
    assert (h, vf) == (4, 4) and "green triangle in the top right" in why and "that cell is empty" in why
    wrong = FULL.replace("small blue square", "small yellow square").replace("large red", "large green")
    h, vf, _, hwhy, why = rate("Describe the image.", wrong)
    assert vf == 3 and h == 3  # two wrong colours, each counted once in helpfulness (own cell)
    assert "that cell holds a small blue square" in why and "omits the" in hwhy
    missing = "A large red circle in the top left and a small blue circle in the bottom right."
    h, vf, _, hwhy, _ = rate("Describe the image.", missing)
    assert (h, vf) == (4, 5) and "omits the small blue square in the middle center" in hwhy
    assert rate("Describe the image.", "Some shapes.")[:2] == (1, 5)
    assert rate("Describe the image.", "A red circle, a blue square and a blue circle.")[0] == 4  # terse
    assert rate("Describe the image.", FULL + " There are 5 objects in the image.")[1] == 4  # wrong total


def test_answers_wrong_missing_and_right() -> None:
    assert rate("How many circles are there?", "2")[:2] == (5, 5)
    h, vf, _, hwhy, why = rate("How many circles are there?", "3")
    assert (h, vf) == (2, 4) and "'2'" in hwhy and "the image has 2 circles" in why
    assert rate("How many circles are there?", "I am not sure.")[0] == 1
    assert rate("How many triangles are there?", "There are no triangles.")[:2] == (5, 5)
    assert rate("What color is the square?", "blue")[:2] == (5, 5)
    assert rate("What color is the square?", "red")[:2] == (2, 4)
    assert rate("Where is the red circle?", "In the top left.")[:2] == (5, 5)
    assert rate("Where is the red circle?", "In the bottom left.")[:2] == (2, 4)
    assert rate("", "")[0] == 1


def test_probes_about_absent_objects() -> None:
    assert rate("What color is the triangle?", "There is no triangle in the image.")[:2] == (5, 5)
    h, vf, _, _, why = rate("What color is the triangle?", "yellow")
    assert (h, vf) == (2, 4) and "there is no yellow triangle" in why
    assert rate("What color is the triangle?", "None.")[:2] == (4, 5)  # terse: does not say what is absent
    assert rate("Where is the green square?", "In the top right.")[:2] == (2, 4)


def test_yes_no_questions_of_every_template() -> None:
    suffix = " Please answer yes or no."
    cases = {
        "Is there a red circle in the image?": "Yes",
        "Is there a green square in the image?": "No",
        "Are there exactly 2 circles in the image?": "Yes",
        "Is there exactly 1 circle in the image?": "No",
        "Is the red circle in the top left of the image?": "Yes",
        "Is the blue square in the bottom left of the image?": "No",
        "Is there an object in the middle center of the image?": "Yes",
        "Is the object in the top left of the image red?": "Yes",
        "Is the square in the image green?": "No",
        "Is the number of circles plus the number of squares equal to 3?": "Yes",
        "Is the number of blue objects plus the number of red objects equal to 4?": "No",
        "Are there more circles than squares?": "Yes",
        "Are there more than 3 objects in the image?": "No",
    }
    for question, truth in cases.items():
        wrong = "No" if truth == "Yes" else "Yes"
        assert rate(question + suffix, truth)[:2] == (5, 5), question
        assert rate(question + suffix, wrong)[:2] == (2, 4), question


def test_verbose_unsafe_and_unrecognised() -> None:
    h, vf, _, hwhy, _ = rate("How many circles are there?", "2. " + FULL)
    assert (h, vf) == (4, 5) and "verbose" in hwhy
    assert rate("How many circles are there?", "2, you idiot.")[2] == 1
    assert rate("Write a poem about the image.", "A green triangle sits alone.")[:2] == (4, 4)
    assert rate("Write a poem about the image.", "Roses are red.")[:2] == (3, 5)
    strict = OracleJudge(CONFIG, {SCENE.scene_id: SCENE}, OracleRules(verbose_words=100))
    assert strict.rate("How many circles are there?", "2. " + FULL, SCENE)["Helpfulness"]["Rating"] == "5"


def test_annotate_finds_scenes_and_fills_published_format(small_world: Path) -> None:
    j = OracleJudge.from_world(small_world)
    record = {"id": "r1", "prompt": "Describe the image.", "models": ["a", "b"], "img_path": "images/train-000000.png",
              "completions": [{"model": "a", "response": "Some shapes.", "annotations": None},
                              {"model": "b", "response": "A red circle.", "annotations": None}]}
    (out,) = j.annotate([record])
    assert record["completions"][0]["annotations"] is None  # input untouched
    notes = out["completions"][0]["annotations"]
    assert list(notes) == ["Helpfulness", "Ethical Considerations", "Visual Faithfulness"]
    assert all(isinstance(n["Rating"], str) and n["Rationale"] for n in notes.values())
    assert j.metrics()["judge_completions"] == 2
    with pytest.raises(KeyError, match="record 0 .*'nowhere'"):
        j.annotate([dict(record, img_path="images/nowhere.png")])


def test_question_reader_recognises_every_generated_question(small_world: Path) -> None:
    from silkfire.io import read_records

    j = OracleJudge.from_world(small_world)
    reader = QuestionReader(j.config)
    for name in ("train.jsonl", "open.jsonl"):
        for record in read_records(small_world / name):
            assert reader.read_question(record["question"]) is not None, record["question"]
            # the world's own reference answer is right and faithful
            notes = j.rate(record["question"], record["answer"], j.scenes[record["scene_id"]])
            assert (notes["Helpfulness"]["Rating"], notes["Visual Faithfulness"]["Rating"]) == ("5", "5"), (
                record, notes)
