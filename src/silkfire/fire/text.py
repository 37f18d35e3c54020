"""The texts of a FIRE dialogue: the student's ``Thought/Answer`` turn and the teacher's ``Score/Feedback`` turn.

One implementation of each parse, used by the records reader, the metrics, the teachers, the dialogue loop, the
SFT builders and the data-quality gate (``silkfire.quality.fire`` imports :func:`parse_score` and
:func:`feedback_text` from here); :class:`TeacherInput` is the texts a teacher reads for one turn (every teacher,
the oracle included, takes it from here; :mod:`silkfire.fire.teacher` re-exports it). This module imports nothing
heavy.

Published layout (MM-FIRE/FIRE raw records):

- student turn: ``"Thought: <reasoning>\\nAnswer: <answer>\\n"``
- teacher turn: ``"Score: N.\\nFeedback: <feedback>\\n"``; upstream also wrote ``"Score: N/10."`` (then the
  stored ``score`` array of the record is wrong: it holds the 1 of "10" or 0 -- always re-parse the text).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_INT = re.compile(r"-?\d+")


def parse_score(text: str) -> int | None:
    """The first integer on the first ``Score:`` line ("Score: 5/10." -> 5, "Score: 10." -> 10); None if none.

    Exactly: find the first occurrence of ``Score:`` (case-sensitive, as the teachers write it), and return the
    first run of digits (with an optional leading "-") between it and the end of its line. "Score: none" or a
    text without ``Score:`` gives None (unparsable).
    """
    start = text.find("Score:")
    if start < 0:
        return None
    end = text.find("\n", start)
    found = _INT.search(text, start + 6, end if end >= 0 else len(text))
    return int(found.group()) if found else None


def feedback_text(text: str) -> str:
    """What the teacher tells the student: the text after "Feedback:", else the turn without its Score line.

    This is all a student ever sees of a teacher turn (FIRE: "only Feedback text goes to the student, never the
    score, never the ground truth"). Not stripped: callers strip where they need to.
    """
    marker = text.find("Feedback:")
    if marker >= 0:
        return text[marker + 9:]
    start = text.find("Score:")
    if start < 0:
        return text
    end = text.find("\n", start)
    return text[:start] + (text[end:] if end >= 0 else "")


def format_teacher(score: int, feedback: str) -> str:
    """A teacher turn in the published layout: ``"Score: {score}.\\nFeedback: {feedback}"`` (one trailing newline)."""
    return f"Score: {int(score)}.\nFeedback: {feedback.strip()}\n"


def format_student(thought: str, answer: str) -> str:
    """A student turn in the published layout: ``"Thought: {thought}\\nAnswer: {answer}"`` (one trailing newline)."""
    return f"Thought: {thought.strip()}\nAnswer: {answer.strip()}\n"


def student_answer(text: str) -> str:
    """The answer part of a student turn: the text after the last ``Answer:`` (stripped), else the whole text.

    A model that ignores the format ("12") is still scored on what it said.
    """
    marker = text.rfind("Answer:")
    return (text[marker + 7:] if marker >= 0 else text).strip()


def student_thought(text: str) -> str:
    """The reasoning part of a student turn: between ``Thought:`` and ``Answer:`` (stripped); "" if absent."""
    start = text.find("Thought:")
    if start < 0:
        return ""
    end = text.rfind("Answer:")
    return text[start + 8:end if end > start else len(text)].strip()


@dataclass(frozen=True)
class TeacherInput:
    """What a teacher sees for one turn.

    ``response``: the student's last turn (full text, "Thought: ...\\nAnswer: ..."). ``image``: path relative to
    the image root. ``scene``: the world scene graph (a scenes.jsonl record or a ``Scene``), oracle only.
    ``category``/``family``: the world question's, when known (the oracle infers them from the text otherwise).
    """

    question: str
    groundtruth: str
    response: str
    image: str | None = None
    scene: Any = None
    category: str | None = None
    family: str | None = None
