"""The FIRE dialogue loop: a student and a teacher converse about a question until the answer is good enough.

Round r (1-based), for every dialogue still open, batched across dialogues:

1. the student answers from the image, the question, its own earlier responses and the teacher's Feedback texts
   (no score, no ground truth: silkfire.fire.students.StudentInput);
2. the teacher scores that response against the ground truth and writes ``"Score: N.\\nFeedback: ..."``.

A dialogue stops (FIRE-1M's rules, :func:`stop_reason`) when the score is >= ``threshold`` (8) -- "solved";
when the score is unparsable or 0 -- "unparsable" / "zero" (the teacher did not follow the format);
when r >= 2 and the score is not above the previous one -- "no_improvement" (switchable: FIRE-Bench's free
dialogue goes on until solved or the turn limit); when r == ``max_rounds`` (3) --
"max_rounds". The turn that triggers a stop is kept. A dialogue whose student or teacher gave no reply (an API
failure after retries) is dropped and counted. Output: FIRE records (silkfire.fire.records), in task order.
Greedy decoding is the students' and teachers' default (HF: ``do_sample=False``; API: temperature 0).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from silkfire.fire.metrics import free_dialogue_metrics
from silkfire.fire.records import FireDialogue
from silkfire.fire.students import Student, StudentInput
from silkfire.fire.teacher import Teacher, TeacherInput
from silkfire.fire.text import feedback_text, parse_score
from silkfire.io import read_records

DEFAULT_THRESHOLD = 8
DEFAULT_MAX_ROUNDS = 3
STOP_REASONS = ("solved", "unparsable", "zero", "no_improvement", "max_rounds")


@dataclass(frozen=True)
class DialogueTask:
    """One question to converse about. ``scene``/``family``/``category``/``world`` are the shapes world's (the oracle
    teacher and scripted students read them); real data leaves them empty."""

    id: str
    image: str
    question: str
    groundtruth: str
    source: str = "shapes"
    scene: Any = None
    family: str | None = None
    category: str | None = None
    world: Mapping[str, Any] | None = field(default=None, compare=False)
    split: str | None = None


@dataclass
class DialogueRun:
    """The loop's output: dialogues (FIRE records in task order) and counts."""

    dialogues: list[FireDialogue]
    stats: dict[str, Any]


def stop_reason(scores: Sequence[int | None], threshold: float = DEFAULT_THRESHOLD,
                max_rounds: int = DEFAULT_MAX_ROUNDS, no_improvement: bool = True) -> str | None:
    """Why a dialogue with these teacher scores so far stops now, or None to go on (module docstring order).
    ``no_improvement=False`` drops that rule (FIRE-Bench's free dialogue: until solved or the turn limit)."""
    last = scores[-1]
    if last is None:
        return "unparsable"
    if last >= threshold:
        return "solved"
    if last == 0:
        return "zero"
    previous = scores[-2] if len(scores) >= 2 else None
    if no_improvement and previous is not None and last <= previous:
        return "no_improvement"
    if len(scores) >= max_rounds:
        return "max_rounds"
    return None


def run_dialogues(tasks: Sequence[DialogueTask], student: Student, teacher: Teacher, image_root: Path, *,
                  threshold: float = DEFAULT_THRESHOLD, max_rounds: int = DEFAULT_MAX_ROUNDS,
                  no_improvement: bool = True, progress: bool = True) -> DialogueRun:
    """Converse about every task (module docstring); batched per round; one progress bar over dialogues.

    ``no_improvement``: FIRE-1M's "score not above the previous one" stop (True, data generation); FIRE-Bench's
    free dialogue runs until solved or ``max_rounds`` (pass False; the published protocol allows ~5 turns).
    """
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
    ids = [task.id for task in tasks]
    if len(set(ids)) != len(ids):
        raise ValueError("dialogue task ids must be unique")
    responses: list[list[str]] = [[] for _ in tasks]
    teacher_turns: list[list[str]] = [[] for _ in tasks]
    reasons: list[str | None] = [None] * len(tasks)
    dropped: Counter[str] = Counter()
    open_ = list(range(len(tasks)))
    bar = tqdm(total=len(tasks), desc="dialogues", unit="dialogue", disable=not progress)
    for round_number in range(1, max_rounds + 1):
        if not open_:
            break
        bar.set_postfix(round=round_number, open=len(open_))
        inputs = [StudentInput(id=tasks[i].id, image=tasks[i].image, question=tasks[i].question,
                               responses=tuple(responses[i]),
                               feedbacks=tuple(feedback_text(turn).strip() for turn in teacher_turns[i]),
                               world=tasks[i].world) for i in open_]
        answers = student.respond(inputs, image_root)
        answered = []
        for i, answer in zip(open_, answers):
            if answer is None or not answer.strip():
                reasons[i] = "student_failed"
                dropped["student_failed"] += 1
                bar.update(1)
            else:
                responses[i].append(answer)
                answered.append(i)
        judged = teacher.judge([TeacherInput(question=tasks[i].question, groundtruth=tasks[i].groundtruth,
                                             response=responses[i][-1], image=tasks[i].image, scene=tasks[i].scene,
                                             category=tasks[i].category, family=tasks[i].family)
                                for i in answered], image_root)
        still_open = []
        for i, turn in zip(answered, judged):
            if turn is None or not turn.strip():
                reasons[i] = "teacher_failed"
                dropped["teacher_failed"] += 1
                bar.update(1)
                continue
            teacher_turns[i].append(turn)
            reason = stop_reason([parse_score(text) for text in teacher_turns[i]], threshold, max_rounds,
                                 no_improvement)
            if reason is None:
                still_open.append(i)
            else:
                reasons[i] = reason
                bar.update(1)
        open_ = still_open
    bar.close()

    dialogues = []
    for i, task in enumerate(tasks):
        if reasons[i] in ("student_failed", "teacher_failed"):
            continue
        dialogues.append(FireDialogue.from_turns(task.image, task.question, task.groundtruth, responses[i],
                                                 teacher_turns[i], task.source, split=task.split))
    stops = Counter(reason for reason in reasons if reason in STOP_REASONS)
    stats: dict[str, Any] = {
        "tasks": len(tasks),
        "dialogues": len(dialogues),
        "dropped": dict(dropped),
        "stop_reasons": {reason: stops.get(reason, 0) for reason in STOP_REASONS},
        "rounds": dict(sorted(Counter(d.round for d in dialogues).items())),
    }
    if dialogues:
        free = free_dialogue_metrics(dialogues, threshold)
        stats.update({key: free[key] for key in ("AT", "ADR", "ATR", "RR")})
    return DialogueRun(dialogues, stats)


# ---- tasks ----------------------------------------------------------------------------------------------------
def world_tasks(world_dir: Path, split_file: str = "train.jsonl", *, families: Iterable[str] | None = ("open", "probe"),
                max_tasks: int | None = None, seed: int = 0, split: str | None = None) -> list[DialogueTask]:
    """Dialogue tasks from a shapes world: questions of ``split_file`` (train/val/open.jsonl, or mme.jsonl) joined
    with their scene graphs (scenes.jsonl). ``families`` keeps those question families (None: all); ``max_tasks``
    takes a seeded sample (order then fixed). ``source`` is ``shapes-<family>-<category>`` (per-kind metrics)."""
    import random

    world_dir = Path(world_dir)
    scenes = {record["image"]: record for record in read_records(world_dir / "scenes.jsonl")}
    records = read_records(world_dir / split_file)
    keep = set(families) if families is not None else None
    tasks = []
    for index, record in enumerate(records):
        family = record.get("family", "mme" if "question_id" in record else None)
        if keep is not None and family not in keep:
            continue
        scene = scenes.get(record["image"])
        if scene is None:
            raise ValueError(f"{world_dir / split_file}: record {index + 1}: image {record['image']!r} has no scene "
                             f"in {world_dir / 'scenes.jsonl'}")
        world = {**record, "family": family, "scene": scene}
        record_id = str(record.get("id") or f"{record.get('question_id')}/{index}")
        tasks.append(DialogueTask(id=record_id, image=record["image"], question=record["question"],
                                  groundtruth=str(record["answer"]), source=f"shapes-{family}-{record.get('category')}",
                                  scene=scene, family=family, category=record.get("category"), world=world,
                                  split=split))
    if max_tasks is not None and max_tasks < len(tasks):
        tasks = random.Random(seed).sample(tasks, max_tasks)
    return tasks


def tasks_from_dialogues(dialogues: Sequence[FireDialogue],
                         scenes: Mapping[str, Any] | None = None) -> list[DialogueTask]:
    """Free-dialogue tasks from FIRE records (FIRE-Bench): the question, ground truth and image of each record
    (its dialogue is not used). ``scenes``: image path -> scene record, for world records and the oracle teacher."""
    tasks = []
    for index, dialogue in enumerate(dialogues):
        scene = scenes.get(dialogue.image) if scenes else None
        tasks.append(DialogueTask(id=f"{index}", image=dialogue.image, question=dialogue.question,
                                  groundtruth=dialogue.groundtruth, source=dialogue.source, scene=scene,
                                  split=dialogue.split))
    return tasks
