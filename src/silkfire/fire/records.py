"""FIRE records exactly as published (MM-FIRE/FIRE raw files), read, checked and written.

A record (one dialogue)::

    {"image": "mathvista/images/530.jpg",
     "question": {"role": "user", "value": "..."},
     "conversations": [{"role": "student", "type": "response", "value": "Thought: ...\\nAnswer: 12\\n"},
                       {"role": "teacher", "type": "feedback", "value": "Score: 5.\\nFeedback: ...\\n"}, ...],
     "groundtruth": {"role": "user", "value": "9"},
     "source": "mathvista", "round": 3, "score": [5, 8, 10]}

optional: ``split`` (fire_100k | fire_1m | fire_test), ``img_path`` (flattened path), ``human_rating`` (a list).
Unknown extra keys are kept (``FireDialogue.extra``) and written back after the published ones.

A dialogue is well formed when (checked by :func:`dialogue_from_record`, which names file, record and field):

- ``image`` and ``source`` are non-empty strings; ``question`` and ``groundtruth`` are ``{role, value}`` with a
  non-blank string value;
- ``conversations`` is a non-empty list of ``{role, type, value}``; roles alternate student, teacher, ...
  starting with the student and ending with the teacher; a student turn has type "response", a teacher turn
  "feedback"; every value is a non-blank string;
- ``round`` is an int equal to the number of teacher turns (>= 1: simulated dialogues whose first answer is
  already right have one round; the published files have >= 2);
- ``score`` is a list (its contents are not trusted: upstream stored N/10 scores wrongly). The scores used
  everywhere are :attr:`FireDialogue.scores`, re-parsed from the teacher turns (:func:`silkfire.fire.text.parse_score`,
  None where a turn has no integer on a ``Score:`` line).

Read: :func:`read_dialogues` (JSONL or one JSON list, sniffed like :mod:`silkfire.io`). Write:
:func:`write_dialogues` (``.json`` -> a JSON list like the published files, anything else JSONL).
The data-quality gate (``silkfire validate fire FILE``) applies the same structure rules plus leak/length checks
to whole files; this module is what code uses to load dialogues into objects.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from silkfire.fire.text import feedback_text, parse_score
from silkfire.io import RecordFileError, iter_records, write_jsonl

STUDENT, TEACHER = "student", "teacher"
RESPONSE, FEEDBACK = "response", "feedback"
TURN_TYPE = {STUDENT: RESPONSE, TEACHER: FEEDBACK}
PUBLISHED_KEYS = ("image", "question", "conversations", "groundtruth", "source", "round", "score")
OPTIONAL_KEYS = ("split", "img_path", "human_rating")


class FireRecordError(RecordFileError):
    """A FIRE record is malformed; the message names the file, the record (1-based) and the field."""


@dataclass(frozen=True)
class Turn:
    """One turn: ``role`` student|teacher, ``type`` response|feedback, ``value`` the text."""

    role: str
    value: str

    @property
    def type(self) -> str:
        return TURN_TYPE[self.role]

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "type": self.type, "value": self.value}


@dataclass
class FireDialogue:
    """One FIRE record as an object; :meth:`to_record` gives the published layout back.

    ``stored_score`` is the record's ``score`` field as read (possibly wrong upstream); :attr:`scores` is what
    the teacher turns say. ``question_role``/``groundtruth_role`` keep the ``role`` of those objects ("user").
    """

    image: str
    question: str
    groundtruth: str
    turns: list[Turn]
    source: str
    stored_score: list[Any] | None = None
    split: str | None = None
    img_path: str | None = None
    human_rating: list[Any] | None = None
    question_role: str = "user"
    groundtruth_role: str = "user"
    extra: dict[str, Any] = field(default_factory=dict)

    # ---- views ---------------------------------------------------------------------------------------------------
    @property
    def round(self) -> int:
        """The number of teacher turns."""
        return sum(1 for turn in self.turns if turn.role == TEACHER)

    @property
    def responses(self) -> list[str]:
        """The student turns' texts, in order."""
        return [turn.value for turn in self.turns if turn.role == STUDENT]

    @property
    def feedbacks(self) -> list[str]:
        """The teacher turns' full texts ("Score: N.\\nFeedback: ..."), in order."""
        return [turn.value for turn in self.turns if turn.role == TEACHER]

    @property
    def scores(self) -> list[int | None]:
        """The teacher scores re-parsed from the teacher turns (None: unparsable); see the module docstring."""
        return [parse_score(text) for text in self.feedbacks]

    @property
    def feedback_texts(self) -> list[str]:
        """What the student is shown of each teacher turn (the Feedback text, stripped; never the score)."""
        return [feedback_text(text).strip() for text in self.feedbacks]

    def score_mismatch(self) -> bool:
        """Whether the stored ``score`` differs from the parsed scores (the upstream N/10 bug, or a stale file)."""
        return self.stored_score != self.scores

    # ---- construction / output -----------------------------------------------------------------------------------
    @classmethod
    def from_turns(cls, image: str, question: str, groundtruth: str, responses: Sequence[str],
                   feedbacks: Sequence[str], source: str, **optional: Any) -> FireDialogue:
        """A dialogue from alternating student responses and teacher turns (as many of each, >= 1).

        ``stored_score`` defaults to the parsed scores with unparsable turns as 0 (upstream's convention when
        its score parser failed), so records written from it pass the gate's score-agreement check.
        """
        if len(responses) != len(feedbacks) or not responses:
            raise ValueError(f"a dialogue needs as many responses as feedbacks (>= 1), got {len(responses)} "
                             f"and {len(feedbacks)}")
        turns: list[Turn] = []
        for response, feedback in zip(responses, feedbacks):
            turns += [Turn(STUDENT, response), Turn(TEACHER, feedback)]
        dialogue = cls(image=image, question=question, groundtruth=groundtruth, turns=turns, source=source,
                       **optional)
        if dialogue.stored_score is None:
            dialogue.stored_score = [0 if score is None else score for score in dialogue.scores]
        return dialogue

    def to_record(self, *, rescore: bool = False) -> dict[str, Any]:
        """The published layout (upstream key order). ``rescore``: write the parsed scores (None -> 0) as ``score``."""
        score = [0 if s is None else s for s in self.scores] if rescore or self.stored_score is None \
            else self.stored_score
        record: dict[str, Any] = {
            "image": self.image,
            "question": {"role": self.question_role, "value": self.question},
            "conversations": [turn.to_dict() for turn in self.turns],
            "groundtruth": {"role": self.groundtruth_role, "value": self.groundtruth},
            "source": self.source,
            "round": self.round,
            "score": list(score),
        }
        for key in OPTIONAL_KEYS:
            value = getattr(self, key)
            if value is not None:
                record[key] = value
        record.update(self.extra)
        return record


# ---- checking one record ---------------------------------------------------------------------------------------
def _text_object(record: Mapping[str, Any], key: str, where: str) -> tuple[str, str]:
    value = record.get(key)
    if not isinstance(value, dict):
        kind = "missing" if value is None else type(value).__name__
        raise FireRecordError(f"{where}: field {key!r} is {kind}, expected an object {{role, value}}")
    text = value.get("value")
    if not isinstance(text, str):
        kind = "missing" if text is None else type(text).__name__
        raise FireRecordError(f"{where}: field {key}.value is {kind}, expected a string")
    if not text.strip():
        raise FireRecordError(f"{where}: field {key}.value is blank")
    role = value.get("role", "user")
    if not isinstance(role, str):
        raise FireRecordError(f"{where}: field {key}.role is {type(role).__name__}, expected a string")
    return text, role


def _string(record: Mapping[str, Any], key: str, where: str, optional: bool = False) -> str | None:
    value = record.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        kind = "missing" if value is None else ("blank" if isinstance(value, str) else type(value).__name__)
        raise FireRecordError(f"{where}: field {key!r} is {kind}, expected a non-empty string")
    return value


def _turns(value: Any, where: str) -> list[Turn]:
    if not isinstance(value, list) or not value:
        kind = "missing" if value is None else ("empty" if isinstance(value, list) else type(value).__name__)
        raise FireRecordError(f"{where}: field 'conversations' is {kind}, expected a non-empty list of turns")
    turns: list[Turn] = []
    for index, turn in enumerate(value):
        at = f"{where}: conversations[{index}]"
        if not isinstance(turn, dict):
            raise FireRecordError(f"{at} is {type(turn).__name__}, expected an object {{role, type, value}}")
        expected = STUDENT if index % 2 == 0 else TEACHER
        role = turn.get("role")
        if role != expected:
            raise FireRecordError(f"{at}: role {role!r}, expected {expected!r} (roles alternate student, teacher, "
                                  "... starting with the student)")
        if turn.get("type") != TURN_TYPE[expected]:
            raise FireRecordError(f"{at} ({role}): type {turn.get('type')!r}, expected {TURN_TYPE[expected]!r}")
        text = turn.get("value")
        if not isinstance(text, str) or not text.strip():
            kind = "blank" if isinstance(text, str) else ("missing" if text is None else type(text).__name__)
            raise FireRecordError(f"{at} ({role}): value is {kind}, expected non-blank text")
        turns.append(Turn(role, text))
    if turns[-1].role != TEACHER:
        raise FireRecordError(f"{where}: field 'conversations' ends with a student turn (turn {len(turns)}); "
                              "a dialogue ends with the teacher's feedback")
    return turns


def dialogue_from_record(record: Mapping[str, Any], where: str = "record") -> FireDialogue:
    """Check one record (module docstring rules) and build its :class:`FireDialogue`; else :class:`FireRecordError`."""
    if not isinstance(record, Mapping):
        raise FireRecordError(f"{where}: expected a JSON object, got {type(record).__name__}")
    image = _string(record, "image", where)
    question, question_role = _text_object(record, "question", where)
    groundtruth, groundtruth_role = _text_object(record, "groundtruth", where)
    source = _string(record, "source", where)
    turns = _turns(record.get("conversations"), where)
    teachers = sum(1 for turn in turns if turn.role == TEACHER)
    rounds = record.get("round")
    if type(rounds) is not int:
        kind = "missing" if rounds is None else type(rounds).__name__
        raise FireRecordError(f"{where}: field 'round' is {kind}, expected an int")
    if rounds != teachers:
        raise FireRecordError(f"{where}: field 'round' is {rounds} but the dialogue has {teachers} teacher turn(s)")
    stored = record.get("score")
    if not isinstance(stored, list):
        kind = "missing" if stored is None else type(stored).__name__
        raise FireRecordError(f"{where}: field 'score' is {kind}, expected a list")
    rating = record.get("human_rating")
    if rating is not None and not isinstance(rating, list):
        raise FireRecordError(f"{where}: field 'human_rating' is {type(rating).__name__}, expected a list")
    extra = {key: value for key, value in record.items() if key not in PUBLISHED_KEYS + OPTIONAL_KEYS}
    return FireDialogue(
        image=image, question=question, groundtruth=groundtruth, turns=turns, source=source,  # type: ignore[arg-type]
        stored_score=list(stored), split=_string(record, "split", where, optional=True),
        img_path=_string(record, "img_path", where, optional=True), human_rating=rating,
        question_role=question_role, groundtruth_role=groundtruth_role, extra=extra,
    )


def check_record(record: Mapping[str, Any]) -> str | None:
    """None when ``record`` is a well-formed FIRE dialogue, else the reason (without a location)."""
    try:
        dialogue_from_record(record, where="record")
    except FireRecordError as error:
        return str(error).removeprefix("record: ")
    return None


# ---- files -----------------------------------------------------------------------------------------------------
def iter_dialogues(path: str | Path) -> Iterator[FireDialogue]:
    """Dialogues of a JSONL / JSON-list file in order; the first malformed record raises :class:`FireRecordError`
    naming the file, the record number (1-based, blank JSONL lines not counted) and the field."""
    path = Path(path)
    for index, record in enumerate(iter_records(path), start=1):
        yield dialogue_from_record(record, where=f"{path}: record {index}")


def read_dialogues(path: str | Path, *, skip_invalid: bool = False) -> tuple[list[FireDialogue], list[str]]:
    """All dialogues of a file and the reasons of the records left out.

    By default a malformed record raises :class:`FireRecordError`; with ``skip_invalid`` it is left out and its
    reason (file, record, field) is returned in the second list. Unreadable JSON always raises.
    """
    path = Path(path)
    dialogues: list[FireDialogue] = []
    rejected: list[str] = []
    for index, record in enumerate(iter_records(path), start=1):
        try:
            dialogues.append(dialogue_from_record(record, where=f"{path}: record {index}"))
        except FireRecordError as error:
            if not skip_invalid:
                raise
            rejected.append(str(error))
    return dialogues, rejected


def write_dialogues(path: str | Path, dialogues: Iterable[FireDialogue], *, rescore: bool = False) -> int:
    """Write dialogues in the published layout: a ``.json`` path gets one JSON list (like FIRE-test.json),
    anything else JSONL. Returns the count. ``rescore``: see :meth:`FireDialogue.to_record`."""
    path = Path(path)
    records = [dialogue.to_record(rescore=rescore) for dialogue in dialogues]
    if path.suffix == ".json":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        return len(records)
    return write_jsonl(path, records)
