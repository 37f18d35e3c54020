"""The oracle teacher: its scoring rules, and feedback that never gives the answer away (the gate's leak rule)."""

from __future__ import annotations

from pathlib import Path

import pytest

from silkfire.fire.oracle_teacher import OracleTeacher
from silkfire.fire.teacher import TeacherInput
from silkfire.fire.text import feedback_text, parse_score
from silkfire.world.scene import Scene, WorldObject

# top row: small red circle (top left); bottom row: large blue square (bottom center), large green circle (bottom right)
SCENE = Scene("s1", "train", (WorldObject("circle", "red", "small", 0, 0), WorldObject("square", "blue", "large", 2, 1),
                              WorldObject("circle", "green", "large", 2, 2)))
DESCRIPTION = ("A small red circle in the top left, a large blue square in the bottom center and a large green circle "
               "in the bottom right.")


@pytest.mark.parametrize("question, truth, answer, score, says", [
    ("How many circles are there?", "2", "2", 10, "Correct"),
    ("How many circles are there?", "2", "two", 10, "Correct"),
    ("How many circles are there?", "2", "1", 5, "too few circles; look at the bottom row"),
    ("How many circles are there?", "2", "4", 3, "too many circles"),
    ("How many circles are there?", "2", "7", 2, "too many circles"),
    ("How many circles are there?", "2", "several", 1, "does not give a number"),
    ("How many triangles are there?", "0", "There are no triangles.", 10, "Correct"),
    ("How many triangles are there?", "0", "1", 5, "too many triangles"),
    ("What color is the square?", "blue", "blue", 10, "Correct"),
    ("What color is the square?", "blue", "red", 2, "Red is not the colour of the square"),
    ("What color is the square?", "blue", "I cannot tell", 1, "does not name a colour"),
    # a hedge that names several colours (e.g. a scene description) is not right, even when the first one is
    ("What color is the square?", "blue", DESCRIPTION, 2, "names several colours (red, blue, green)"),
    ("What color is the square?", "blue", "blue or red", 2, "say only the colour of the square"),
    ("What color is the square?", "blue", "There is no square.", 1, "There is a square in the image"),
    ("What color is the triangle?", "There is no triangle in the image.", "There is no triangle.", 10, "Correct"),
    ("What color is the triangle?", "There is no triangle in the image.", "green", 1, "really a triangle"),
    ("Where is the red circle?", "In the top left.", "In the top left.", 10, "Correct"),
    ("Where is the red circle?", "In the top left.", "In the top right.", 5, "row is right, but not the column"),
    ("Where is the red circle?", "In the top left.", "In the bottom left.", 5, "column is right, but not the row"),
    ("Where is the red circle?", "In the top left.", "In the middle right.", 2, "higher up and further left"),
    ("Where is the red circle?", "In the top left.", "Somewhere.", 1, "name its row"),
    ("Where is the red circle?", "In the top left.", "In the top left or the bottom right.", 2, "several places"),
    ("Where is the green square?", "There is no green square in the image.", "In the top left.", 1, "really a"),
    ("Describe the image.", DESCRIPTION, DESCRIPTION, 10, "Correct"),
    ("Describe the image.", DESCRIPTION, "A small red circle in the top left and a large blue square in the bottom "
     "center.", 1 + round(6 * 0.8), "missed an object in the bottom row"),
    ("Describe the image.", DESCRIPTION, "A small red circle in the top left, a large red square in the bottom center "
     "and a large green circle in the bottom right.", 1 + round(6 * 2 / 3), "bottom center is not red"),
    ("Describe the image.", DESCRIPTION, "Some shapes.", 1, "Describe each object"),
    ("Describe the image.", DESCRIPTION, DESCRIPTION[:-1] + " and a small red circle in the top left.",
     1 + round(6 * 2 * 0.75 * 1.0 / 1.75), "described the top left more than once"),
    ("Is there a blue square in the image? Please answer yes or no.", "Yes", "Yes", 10, "Correct"),
    ("Is there a blue square in the image? Please answer yes or no.", "Yes", "No", 2, "colour and its shape"),
    ("Are there exactly 2 circles in the image? Please answer yes or no.", "Yes", "No", 2, "Count the circles"),
    ("Is the number of circles plus the number of squares equal to 3? Please answer yes or no.", "Yes", "No", 2,
     "Count the circles and the squares again, then add"),
    ("Are there more circles than squares? Please answer yes or no.", "Yes", "Maybe", 1, "yes or no"),
])
def test_scoring_rules(question: str, truth: str, answer: str, score: int, says: str) -> None:
    text = OracleTeacher().turn(TeacherInput(question, truth, f"Thought: I look.\nAnswer: {answer}\n", scene=SCENE))
    assert text.startswith(f"Score: {score}.\nFeedback: ")
    assert parse_score(text) == score and says in feedback_text(text)


def test_scene_record_and_real_data_without_scene() -> None:
    oracle = OracleTeacher()
    record = {"scene_id": "s1", "split": "train", "objects": [o.to_dict() for o in SCENE.objects]}
    assert parse_score(oracle.turn(TeacherInput("How many circles are there?", "2", "Answer: 2", scene=record))) == 10
    # without a scene graph: a ground-truth text comparison
    assert parse_score(oracle.turn(TeacherInput("<image>\nWhat is the revenue?", "45.7", "Answer: 45.7 million"))) == 10
    assert parse_score(oracle.turn(TeacherInput("What is the revenue?", "45.7", "Answer: 41.2"))) == 5
    low = oracle.turn(TeacherInput("What is the revenue?", "45.7", "Answer: 12"))
    assert parse_score(low) == 2 and "too low" in low and "45.7" not in low
    assert parse_score(oracle.turn(TeacherInput("What animal is it?", "a dog", "Answer: a cat"))) == 1
    assert parse_score(oracle.turn(TeacherInput("What animal is it?", "a brown dog", "Answer: a dog"))) <= 7


def test_truth_scores_ten_wrong_answers_score_low_and_nothing_leaks(tmp_path: Path) -> None:
    """Over every question of a generated world: the reference answer scores 10, a scripted wrong answer < 8,
    and no feedback reveals the ground truth (the quality gate's own leak rule)."""
    from silkfire.fire.dialogue import world_tasks
    from silkfire.fire.students import ScriptedStudent, StudentInput
    from silkfire.models.testing import make_test_world
    from silkfire.quality.config import FireConfig
    from silkfire.quality.derive import OK
    from silkfire.quality.fire import leak_key, leaks

    world = make_test_world(tmp_path / "world", train_scenes=12, val_scenes=1, test_scenes=1)
    tasks = world_tasks(world, families=None)
    assert {task.family for task in tasks} == {"mme", "open", "probe"}
    oracle, wrong = OracleTeacher(), ScriptedStudent("careless", error_rate=1.0, seed=3)
    cfg = FireConfig()
    checked = 0
    for task in tasks:
        def judge(response: str) -> str:
            return oracle.turn(TeacherInput(task.question, task.groundtruth, response, scene=task.scene))

        right = judge(f"Thought: I look.\nAnswer: {task.groundtruth}\n")
        assert parse_score(right) == 10, (task.question, task.groundtruth, right)
        response = wrong.answer(StudentInput(task.id, task.image, task.question, world=task.world))
        turn = judge(response)
        assert parse_score(turn) < 8, (task.question, task.groundtruth, response, turn)
        key = leak_key(task.groundtruth, cfg)
        if key is not None:
            turns = [{"role": "student", "type": "response", "value": response},
                     {"role": "teacher", "type": "feedback", "value": turn}]
            assert leaks(turns, key) == OK, (task.question, task.groundtruth, response, turn)
            checked += 1
    assert checked >= 40  # open/probe questions (yes/no answers are not leak-checked)
