"""Local VLM folders as FIRE teacher and student (a tiny real LLaVA): batched greedy generation, batch-independent."""

from __future__ import annotations

from pathlib import Path

import pytest

from silkfire.fire.dialogue import run_dialogues, world_tasks
from silkfire.fire.generation import chat_messages
from silkfire.fire.oracle_teacher import OracleTeacher
from silkfire.fire.prompts import teacher_prompt
from silkfire.fire.students import HFStudent
from silkfire.fire.teacher import TeacherInput, TrainedTeacher


def test_trained_teacher_generates_from_the_joined_prompt(fire_world: Path, fire_model: Path) -> None:
    teacher = TrainedTeacher(fire_model, batch_size=2, max_new_tokens=6, progress=False)
    items = [TeacherInput("How many circles are there?", "2", f"Answer: {n}", image="images/train-000000.png")
             for n in range(3)]
    turns = teacher.judge(items, fire_world)
    assert len(turns) == 3 and all(isinstance(turn, str) for turn in turns)
    # greedy and batch-independent: one at a time gives the same texts
    assert [teacher.judge([item], fire_world)[0] for item in items] == turns
    assert teacher_prompt("<image>\nQ?", "2", "Answer: 1").startswith("Question: Q?\nGroundtruth: 2\nPlease compare")
    short = teacher_prompt("Q?", "2", "Answer: 1", instruction="short")
    assert "do NOT tell the groundtruth" in short and len(short) < 250
    with pytest.raises(ValueError, match="instruction"):
        TrainedTeacher(fire_model, instruction="long")


def test_hf_student_batched_greedy(fire_world: Path, fire_model: Path) -> None:
    tasks = world_tasks(fire_world, families=("open",), max_tasks=4, seed=0)

    def run(batch_size: int) -> list[dict]:
        student = HFStudent(fire_model, batch_size=batch_size, max_new_tokens=5, progress=False)
        result = run_dialogues(tasks, student, OracleTeacher(), fire_world, max_rounds=2, progress=False)
        assert len(result.dialogues) + sum(result.stats["dropped"].values()) == len(tasks)
        assert result.dialogues  # the tiny model's replies are not empty: real dialogues were written
        return [d.to_record() for d in result.dialogues]

    assert run(4) == run(1)


def test_chat_messages_put_the_image_in_the_first_turn_only() -> None:
    messages = chat_messages([("Q?", "r1"), ("feedback", None)])
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"][0] == {"type": "image"}
    assert messages[2]["content"] == [{"type": "text", "text": "feedback"}]
    with pytest.raises(ValueError, match="only the last turn"):
        chat_messages([("Q?", None), ("f", None)])
