"""The dialogue loop: FIRE-1M's stop rules, scripted students refining with the oracle, API and HF students, what a
student may see, dropped dialogues; its records pass the FIRE quality gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from silkfire.fire.dialogue import DialogueTask, run_dialogues, stop_reason, tasks_from_dialogues, world_tasks
from silkfire.fire.oracle_teacher import OracleTeacher
from silkfire.fire.records import check_record, read_dialogues, write_dialogues
from silkfire.fire.students import ApiStudent, HFStudent, ScriptedStudent, Student, StudentInput, build_student
from silkfire.fire.teacher import ApiTeacher
from silkfire.llm.testing import FakeChatServer

SAMPLE = Path(__file__).parent / "data" / "fire_sample.json"


@pytest.mark.parametrize("scores, reason", [
    ([8], "solved"), ([10], "solved"), ([None], "unparsable"), ([0], "zero"), ([5], None),
    ([5, 4], "no_improvement"), ([5, 5], "no_improvement"), ([5, 6], None), ([5, 6, 7], "max_rounds"),
    ([5, 6, 9], "solved"), ([3, None], "unparsable"), ([3, 0], "zero"),
])
def test_stop_rules(scores: list[int | None], reason: str | None) -> None:
    assert stop_reason(scores, threshold=8, max_rounds=3) == reason
    if reason == "no_improvement":  # FIRE-Bench's free dialogue: only solved / unparsable / zero / the turn limit
        assert stop_reason(scores, threshold=8, max_rounds=3, no_improvement=False) is None
        assert stop_reason(scores, threshold=8, max_rounds=2, no_improvement=False) == "max_rounds"


def test_scripted_students_refine_and_the_records_pass_the_gate(fire_world: Path, tmp_path: Path) -> None:
    from silkfire.quality.cli import config_from_overrides
    from silkfire.quality.fire import validate_fire

    tasks = world_tasks(fire_world, families=("open", "probe"))
    run = run_dialogues(tasks, ScriptedStudent("careless", seed=0), OracleTeacher(), fire_world, progress=False)
    dialogues = run.dialogues
    assert len(dialogues) == len(tasks) == run.stats["dialogues"] and run.stats["dropped"] == {}
    assert all(check_record(d.to_record()) is None for d in dialogues)
    assert sum(run.stats["stop_reasons"].values()) == len(tasks)
    assert set(run.stats["rounds"]) <= {1, 2, 3} and run.stats["rounds"].get(2, 0) > 0
    refined = [d for d in dialogues if d.round >= 2 and d.scores[-1] >= 8 > d.scores[0]]
    assert refined and 0 < run.stats["RR"] <= 1
    for dialogue in dialogues:  # the stop rule explains every length
        scores = dialogue.scores
        assert all(stop_reason(scores[:k]) is None for k in range(1, len(scores)))
        assert stop_reason(scores) is not None
    path = tmp_path / "dialogues.jsonl"
    assert write_dialogues(path, dialogues) == len(dialogues)
    config = config_from_overrides(["check_images=false", "data_docs=false", "fire.score_agreement=1.0"])
    result = validate_fire(path, config, tmp_path / "report")
    assert result.success, [failure.description for _, failure in result.failures]


def test_profiles_and_rounds(fire_world: Path) -> None:
    tasks = world_tasks(fire_world, families=("open",), max_tasks=12, seed=1)
    assert len(tasks) == 12 and tasks == world_tasks(fire_world, families=("open",), max_tasks=12, seed=1)
    correct = run_dialogues(tasks, ScriptedStudent("correct"), OracleTeacher(), fire_world, progress=False)
    assert correct.stats["rounds"] == {1: 12} and correct.stats["stop_reasons"]["solved"] == 12
    stubborn = run_dialogues(tasks, ScriptedStudent("stubborn", error_rate=1.0, refine_prob=0.0), OracleTeacher(),
                             fire_world, progress=False)
    assert stubborn.stats["stop_reasons"]["no_improvement"] == 12 and stubborn.stats["rounds"] == {2: 12}
    patient = run_dialogues(tasks, ScriptedStudent("stubborn", error_rate=1.0, refine_prob=0.0), OracleTeacher(),
                            fire_world, max_rounds=5, no_improvement=False, progress=False)
    assert patient.stats["stop_reasons"]["max_rounds"] == 12 and patient.stats["rounds"] == {5: 12}
    one = run_dialogues(tasks, ScriptedStudent(error_rate=1.0), OracleTeacher(), fire_world, max_rounds=1,
                        progress=False)
    assert one.stats["rounds"] == {1: 12} and one.stats["stop_reasons"]["max_rounds"] == 12
    again = run_dialogues(tasks, ScriptedStudent("careless", seed=0), OracleTeacher(), fire_world, progress=False)
    same = run_dialogues(tasks, ScriptedStudent("careless", seed=0), OracleTeacher(), fire_world, progress=False)
    assert [d.to_record() for d in again.dialogues] == [d.to_record() for d in same.dialogues]  # seeded
    with pytest.raises(ValueError, match="unique"):
        run_dialogues(tasks[:1] * 2, ScriptedStudent(), OracleTeacher(), fire_world, progress=False)
    with pytest.raises(ValueError, match="no world record"):
        ScriptedStudent().respond([StudentInput("x", "images/a.png", "How many circles are there?")])


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def counting_student(body: dict) -> str:
    """An API student: answers 1, then one more after each feedback."""
    turns = sum(message["role"] == "assistant" for message in body["messages"])
    return f"Thought: I count again.\nAnswer: {turns + 1}\n"


def fake_teacher(body: dict) -> str:
    truth = _text(body["messages"][0]["content"]).split("Groundtruth: ")[1]
    said = _text(body["messages"][2]["content"]).rsplit("Answer: ", 1)[1].strip()
    if said == truth:
        return "Score: 10.\nFeedback: Correct."
    return f"Score: {max(1, 9 - 3 * abs(int(said) - int(truth)))}.\nFeedback: You counted too few; look again."


def test_api_student_and_teacher_never_show_the_student_a_score_or_the_truth(fire_world: Path) -> None:
    tasks = [DialogueTask(id=str(n), image="images/train-000000.png", question="How many shapes are there?",
                          groundtruth=str(n)) for n in (1, 2, 3, 4)]
    settings = {"api_key_env": None, "timeout_s": 0.5, "backoff_base_s": 0.001, "backoff_max_s": 0.01,
                "max_retries": 10}
    with FakeChatServer(counting_student, fault_rate=0.3, fault_kinds=("500", "malformed"), seed=1) as students, \
            FakeChatServer(fake_teacher, fault_rate=0.3, fault_kinds=("429", "503"), seed=2) as teachers:
        student = build_student({"kind": "api", "base_url": students.url, "model": "s", **settings})
        teacher = ApiTeacher({"base_url": teachers.url, "model": "t", **settings})
        assert isinstance(student, ApiStudent) and isinstance(student, Student)
        run = run_dialogues(tasks, student, teacher, fire_world, max_rounds=3, progress=False)
        student_bodies = list(students.requests)
    assert [d.scores for d in run.dialogues] == [[10], [6, 10], [3, 6, 10], [1, 3, 6]]
    assert run.stats["stop_reasons"] == {"solved": 3, "unparsable": 0, "zero": 0, "no_improvement": 0,
                                         "max_rounds": 1}
    for body in student_bodies:
        texts = [_text(message["content"]) for message in body["messages"]]
        assert not any("Score" in text or "Groundtruth" in text for text in texts)
        assert "Thought: <your reasoning>" in texts[0]  # the format hint for an untrained API model
        assert [m["role"] for m in body["messages"]][::2] == ["user"] * ((len(texts) + 1) // 2)
    later = next(body for body in student_bodies if len(body["messages"]) == 3)
    assert _text(later["messages"][2]["content"]) == "You counted too few; look again."


def test_failed_replies_drop_the_dialogue(fire_world: Path) -> None:
    tasks = [DialogueTask(id="a", image="images/train-000000.png", question="How many?", groundtruth="2")]
    with FakeChatServer(counting_student) as students, FakeChatServer("x", script=["500"] * 20) as teachers:
        settings = {"api_key_env": None, "timeout_s": 0.5, "backoff_base_s": 0.001, "max_retries": 1}
        run = run_dialogues(tasks, ApiStudent({"base_url": students.url, "model": "s", **settings}),
                            ApiTeacher({"base_url": teachers.url, "model": "t", **settings}), fire_world,
                            progress=False)
    assert run.dialogues == [] and run.stats["dropped"] == {"teacher_failed": 1} and "AT" not in run.stats


def test_tasks_from_fire_records_and_student_factory(tmp_path: Path) -> None:
    dialogues, _ = read_dialogues(SAMPLE)
    tasks = tasks_from_dialogues(dialogues, scenes={"gqa/images/2354786.jpg": {"scene_id": "x"}})
    assert [t.groundtruth for t in tasks] == ["9", "45.7", "red"] and tasks[2].scene == {"scene_id": "x"}
    assert tasks[1].split == "fire_test" and tasks[0].source == "mathvista"
    assert isinstance(build_student({"kind": "hf", "path": "models/sft/model"}, root=tmp_path), HFStudent)
    scripted = build_student({"kind": "scripted", "profile": "stubborn", "refine_prob": 0.9}, seed=4)
    assert scripted.describe() == {"kind": "scripted", "profile": "stubborn", "error_rate": 0.8,
                                   "refine_prob": pytest.approx(0.3), "seed": 4}
    for bad, message in [({"kind": "x"}, "unknown kind"), ({"kind": "hf"}, "needs 'path'"),
                         ({"kind": "scripted", "profile": "lazy"}, "unknown scripted student profile"),
                         ({"kind": "scripted", "temperature": 1}, "unknown key")]:
        with pytest.raises(ValueError, match=message):
            build_student(bad)


def test_scripted_thoughts_cost_few_tokens_of_the_world_tokenizer() -> None:
    # The world model's tokenizer spells words outside the world's texts letter by letter; a long Thought before
    # every answer cost the FIRE-trained tiny student its first-turn accuracy (README, FIRE branch).
    from silkfire.fire.students import FIRST_LOOK, REFINED_LOOK, STUBBORN_LOOK
    from silkfire.models.config import ModelConfig
    from silkfire.models.tokenizer import train_tokenizer
    from silkfire.world import WorldConfig, world_texts

    tokenizer = train_tokenizer(world_texts(WorldConfig()), ModelConfig().vocab_size)  # the default world model's

    def cost(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    answer = "A large green square in the top left and a small red circle in the bottom right."
    assert cost(answer) <= 20  # world words are whole tokens ...
    for thought in (FIRST_LOOK, REFINED_LOOK, STUBBORN_LOOK):
        assert cost(thought) <= 16, thought  # ... the Thought stays short
    assert cost("I go through the grid row by row and name each object.") > 30  # an old one the bound guards against
