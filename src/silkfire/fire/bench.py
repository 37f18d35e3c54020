"""FIRE-Bench runs: fixed dialogue and free dialogue of local VLM folders, and the comparison table.

Fixed dialogue (FIRE-Bench's first protocol): every held-out reference dialogue is cut into the prefixes before
each model turn (:func:`silkfire.fire.metrics.fixed_dialogue_items`); the model writes that turn from the
reference history, greedy. Student turns (the refined responses) are scored with BLEU-1..4 and CIDEr against the
reference turn; teacher turns with BLEU/CIDEr and the MAE of the parsed score (unparsable = error 10).

Free dialogue (the second): a student model answers a held-out question, a teacher (the oracle by default, or the
trained teacher) scores it and gives feedback; the student sees only the Feedback text and answers again, until a
score >= ``stop_score`` or ``max_turns`` student turns -- FIRE-Bench's rule (the data-generation loop,
:func:`silkfire.fire.dialogue.run_dialogues`, also stops on "no improvement"; here that rule is off). AT, ADR, ATR,
RR (silkfire.fire.metrics) per model, AT normalised to the baseline (the SFT-only model).

Everything here takes model folders and dialogue objects; the `fire_bench` stage wires in config, files and MLflow.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from silkfire.fire.dialogue import DialogueTask, run_dialogues, tasks_from_dialogues
from silkfire.fire.metrics import DEFAULT_THRESHOLD, FixedItem, fixed_dialogue_items, fixed_dialogue_metrics
from silkfire.fire.metrics import free_dialogue_metrics
from silkfire.fire.records import STUDENT, TEACHER, FireDialogue
from silkfire.fire.students import HFStudent, Student, StudentInput
from silkfire.fire.teacher import Teacher, TeacherInput, TrainedTeacher
from silkfire.fire.text import feedback_text

EMPTY_RESPONSE = "(no response)"  # stands in for an empty generation: FIRE records have no blank turns
EMPTY_FEEDBACK = "(no feedback)"  # a model teacher that wrote nothing: no score (unparsable, counts as 0)

# FIRE (arXiv 2407.11522), LLaVA-NeXT-8B -> FIRE-LLaVA, for context next to our numbers.
PAPER_FREE = {"baseline": {"AT_norm": 1.0, "ADR": 0.97, "ATR": 0.41, "RR": 0.25},
              "fire": {"AT_norm": 0.84, "ADR": 1.56, "ATR": 0.66, "RR": 0.39}}
PAPER_TEACHER_MAE = {"baseline": 1.88, "fire": 0.30}


@dataclass(frozen=True)
class GenerationOptions:
    """Greedy decoding of local models (batch size and new-token budgets per role)."""

    batch_size: int = 32
    student_max_new_tokens: int = 128
    teacher_max_new_tokens: int = 112
    dtype: str = "auto"  # silkfire.runtime: the stage passes runtime.dtype / runtime.device
    device: str = "auto"
    teacher_instruction: str = "fire"  # the one the trained teacher learned (silkfire.fire.prompts: fire | short)
    progress: bool = True


@dataclass
class FreeDialogueRun:
    """The dialogues one student had with one teacher, and what went wrong on the way."""

    dialogues: list[FireDialogue] = field(default_factory=list)
    dropped: int = 0  # the student or teacher gave no reply (API failure): the dialogue is left out
    empty_responses: int = 0
    empty_feedback: int = 0


def model_student(path: str | Path, options: GenerationOptions, name: str) -> HFStudent:
    """A local model folder as a FIRE student (greedy, batched across dialogues)."""
    return HFStudent(path, name=name, dtype=options.dtype, device=options.device, batch_size=options.batch_size,
                     max_new_tokens=options.student_max_new_tokens, progress=options.progress)


def model_teacher(path: str | Path, options: GenerationOptions, name: str) -> TrainedTeacher:
    """A local model folder as a teacher (the trained FD-LLaVA analogue, or the untrained SFT baseline)."""
    return TrainedTeacher(path, name=name, dtype=options.dtype, device=options.device, batch_size=options.batch_size,
                          max_new_tokens=options.teacher_max_new_tokens, instruction=options.teacher_instruction,
                          progress=options.progress)


# ---- free dialogue -----------------------------------------------------------------------------------------------
def bench_tasks(dialogues: Sequence[FireDialogue], scenes: Mapping[str, Any] | None = None,
                limit: int | None = None, seed: int = 0) -> list[DialogueTask]:
    """Free-dialogue tasks: each distinct (image, question) of the held-out dialogues once, a seeded sample of
    at most ``limit`` kept in file order, with its scene (oracle teacher) when ``scenes`` has it."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for dialogue in dialogues:
        if (dialogue.image, dialogue.question) not in seen:
            seen.add((dialogue.image, dialogue.question))
            unique.append(dialogue)
    if limit is not None and len(unique) > limit:
        keep = sorted(random.Random(seed).sample(range(len(unique)), limit))
        unique = [unique[i] for i in keep]
    return tasks_from_dialogues(unique, scenes)


def _fill_empty(texts: Sequence[str | None], filler: str) -> tuple[list[str | None], int]:
    """Blank texts replaced by ``filler`` (None -- a failed call -- stays None), and how many were blank."""
    blank = [text is not None and not text.strip() for text in texts]
    return [filler if is_blank else text for text, is_blank in zip(texts, blank)], sum(blank)


class _AlwaysAnswers:
    """A student whose empty generations become :data:`EMPTY_RESPONSE` (counted): the dialogue loop drops a
    dialogue whose student gave no reply (an API failure), but a model that writes nothing has answered badly
    and must stay in the benchmark."""

    def __init__(self, student: Student):
        self.student, self.name, self.empty = student, student.name, 0

    def describe(self) -> dict[str, Any]:
        return self.student.describe()

    def respond(self, items: Sequence[StudentInput], image_root: Path | None = None) -> list[str | None]:
        replies, empty = _fill_empty(self.student.respond(items, image_root), EMPTY_RESPONSE)
        self.empty += empty
        return replies


class _AlwaysJudges:
    """A teacher whose empty turns become :data:`EMPTY_FEEDBACK` (counted): a model teacher that writes nothing
    has judged badly (no score), not failed like an unreachable API (None stays None: dropped)."""

    def __init__(self, teacher: Teacher):
        self.teacher, self.name, self.empty = teacher, teacher.name, 0

    def describe(self) -> dict[str, Any]:
        return self.teacher.describe()

    def judge(self, items: Sequence[TeacherInput], image_root: Path | None = None) -> list[str | None]:
        verdicts, empty = _fill_empty(self.teacher.judge(items, image_root), EMPTY_FEEDBACK)
        self.empty += empty
        return verdicts


def free_dialogue(student: Student, teacher: Teacher, tasks: Sequence[DialogueTask], image_root: Path, *,
                  max_turns: int = 5, stop_score: float = DEFAULT_THRESHOLD, progress: bool = False) -> FreeDialogueRun:
    """Every task as a dialogue (silkfire.fire.dialogue.run_dialogues, batched per turn) under FIRE-Bench's rule:
    until the score reaches ``stop_score`` or ``max_turns`` student turns -- no "no improvement" stop. The student
    sees the question (image attached), then only each teacher turn's Feedback text."""
    if max_turns < 1:
        raise ValueError(f"max_turns must be >= 1, got {max_turns}")
    wrapped, judging = _AlwaysAnswers(student), _AlwaysJudges(teacher)
    result = run_dialogues(tasks, wrapped, judging, image_root, threshold=stop_score, max_rounds=max_turns,
                           no_improvement=False, progress=progress)
    return FreeDialogueRun(result.dialogues, dropped=sum(result.stats["dropped"].values()),
                           empty_responses=wrapped.empty, empty_feedback=judging.empty)


def free_dialogue_results(runs: Mapping[str, FreeDialogueRun], baseline: str,
                          stop_score: float = DEFAULT_THRESHOLD) -> dict[str, dict[str, Any]]:
    """AT/ADR/ATR/RR per model, ``AT_norm`` relative to ``baseline``, first/final accuracy, drop/empty counts."""
    results = {}
    for name, run in runs.items():
        counts = {"dropped": run.dropped, "empty_responses": run.empty_responses, "empty_feedback": run.empty_feedback}
        if not run.dialogues:  # every dialogue dropped: report it, never crash the benchmark
            results[name] = {**{key: math.nan for key in ("AT", "ADR", "ATR", "RR", "accuracy_first",
                                                          "accuracy_final", "AT_norm")}, "dialogues": 0, **counts}
            continue
        metrics = free_dialogue_metrics(run.dialogues, threshold=stop_score)
        scores = [[0 if s is None else s for s in dialogue.scores] for dialogue in run.dialogues]
        metrics.update({
            "accuracy_first": sum(s[0] >= stop_score for s in scores) / len(scores),
            "accuracy_final": sum(s[-1] >= stop_score for s in scores) / len(scores),
            **counts,
        })
        results[name] = metrics
    if baseline not in results:
        raise ValueError(f"baseline {baseline!r} is not among the models {sorted(results)}")
    base_at = results[baseline]["AT"]
    for metrics in results.values():
        if metrics["dialogues"]:
            metrics["AT_norm"] = metrics["AT"] / base_at if base_at == base_at and base_at > 0 else math.nan
    return results


# ---- fixed dialogue ----------------------------------------------------------------------------------------------
def sample_items(items: Sequence[FixedItem], limit: int | None, seed: int) -> list[FixedItem]:
    """At most ``limit`` items: a seeded sample kept in the original order."""
    if limit is None or len(items) <= limit:
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def student_items(dialogues: Sequence[FireDialogue], limit: int | None, seed: int) -> list[FixedItem]:
    return sample_items(fixed_dialogue_items(dialogues, STUDENT), limit, seed)


def teacher_items(dialogues: Sequence[FireDialogue], limit: int | None, seed: int) -> list[FixedItem]:
    return sample_items(fixed_dialogue_items(dialogues, TEACHER), limit, seed)


def fixed_student(student: Student, items: Sequence[FixedItem], image_root: Path) -> tuple[list[str], dict]:
    """The student's refined turns written from the reference histories, and their BLEU/CIDEr."""
    inputs = [StudentInput(id=f"{item.dialogue}/{item.turn}", image=item.image, question=item.question,
                           responses=item.responses,
                           feedbacks=tuple(feedback_text(turn).strip() for turn in item.feedbacks))
              for item in items]
    generated = [text or "" for text in student.respond(inputs, image_root)]
    return generated, fixed_dialogue_metrics([text.strip() or EMPTY_RESPONSE for text in generated], items)


def fixed_teacher(teacher: Teacher, items: Sequence[FixedItem], image_root: Path,
                  scenes: Mapping[str, Any] | None = None) -> tuple[list[str], dict]:
    """The teacher's turns judging each reference response, and their BLEU/CIDEr and score MAE.
    ``scenes`` (image -> scene record) lets the world's oracle judge by the scene graph; models ignore it."""
    inputs = [TeacherInput(question=item.question, groundtruth=item.groundtruth, response=item.responses[-1],
                           image=item.image, scene=(scenes or {}).get(item.image)) for item in items]
    generated = [text or "" for text in teacher.judge(inputs, image_root)]
    return generated, fixed_dialogue_metrics([text.strip() or EMPTY_RESPONSE for text in generated], items)


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def comparison_markdown(free: Mapping[str, Mapping[str, Mapping[str, Any]]],
                        fixed_students: Mapping[str, Mapping[str, Any]],
                        fixed_teachers: Mapping[str, Mapping[str, Any]], baseline: str,
                        title: str = "FIRE-Bench") -> str:
    """FIRE-Bench tables in Markdown: free dialogue per teacher, fixed dialogue per role, the paper for context."""
    lines = [f"# {title}", ""]
    for teacher, results in free.items():
        lines += [f"## Free dialogue (teacher: {teacher})", "",
                  "| model | AT (norm.) | AT | ADR | ATR | RR | acc. turn 1 | acc. final | dialogues |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, m in results.items():
            lines.append(f"| {name}{' (baseline)' if name == baseline else ''} | {_fmt(m['AT_norm'])} | "
                         f"{_fmt(m['AT'])} | {_fmt(m['ADR'])} | {_fmt(m['ATR'])} | {_fmt(m['RR'])} | "
                         f"{_fmt(m.get('accuracy_first', ''))} | {_fmt(m.get('accuracy_final', ''))} | "
                         f"{m['dialogues']} |")
        lines += ["", f"Paper (LLaVA-NeXT-8B -> FIRE-LLaVA): AT 1 -> {PAPER_FREE['fire']['AT_norm']}, ADR "
                  f"{PAPER_FREE['baseline']['ADR']} -> {PAPER_FREE['fire']['ADR']}, ATR "
                  f"{PAPER_FREE['baseline']['ATR']} -> {PAPER_FREE['fire']['ATR']}, RR "
                  f"{PAPER_FREE['baseline']['RR']} -> {PAPER_FREE['fire']['RR']}.", ""]
    if fixed_students:
        lines += ["## Fixed dialogue: student turns (refined responses vs reference)", "",
                  "| model | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | CIDEr | items |", "|---|---|---|---|---|---|---|"]
        for name, m in fixed_students.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(m[f'BLEU-{n}']) for n in range(1, 5))
                         + f" | {_fmt(m['CIDEr'])} | {m['items']} |")
        lines.append("")
    if fixed_teachers:
        lines += ["## Fixed dialogue: teacher turns (vs the oracle teacher's reference turns)", "",
                  "| model | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | CIDEr | score MAE | unparsable | items |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, m in fixed_teachers.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(m[f'BLEU-{n}']) for n in range(1, 5))
                         + f" | {_fmt(m['CIDEr'])} | {_fmt(m['MAE'])} | {m.get('unparsable', '')} | {m['items']} |")
        lines += ["", f"Paper: teacher score MAE {PAPER_TEACHER_MAE['baseline']} (LLaVA-NeXT-8B) -> "
                  f"{PAPER_TEACHER_MAE['fire']} (FD-LLaVA).", ""]
    return "\n".join(lines)


