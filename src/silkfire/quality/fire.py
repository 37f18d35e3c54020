"""FIRE dialogues (MM-FIRE/FIRE raw records) through the gate.

Record: ``{"image", "question": {"role", "value"}, "conversations": [{"role": "student"|"teacher",
"type": "response"|"feedback", "value"}, ...], "groundtruth": {"role", "value"}, "source", "round",
"score": [...]}`` (+ optional ``split``, ``img_path``, ``human_rating``). Rules (docs/quality.md):

- turns alternate student, teacher, ... starting with the student and ending with the teacher; a student turn
  is a "response", a teacher turn a "feedback"; no blank turn;
- ``round`` == the number of teacher turns, within ``fire.rounds``;
- the teacher's score is the first integer on its ``Score:`` line ("Score: 5/10." -> 5), in ``fire.scores``;
  the stored ``score[]`` should equal these (upstream stores N/10 scores wrongly, so only
  ``fire.score_agreement`` of the records must agree);
- no ground-truth leak: see :func:`leaks`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# one parser of the teacher's Score line and of what the student is shown, shared with silkfire.fire
from silkfire.fire.text import feedback_text, parse_score  # noqa: F401  (re-exported: quality.fire.parse_score)
from silkfire.quality.columnar import Columnar, Screen, as_mask, objects, per_row_all, shorter, visible
from silkfire.quality.config import FireConfig, QualityConfig
from silkfire.quality.derive import OK
from silkfire.quality.gate import Check, between, is_ok
from silkfire.quality.kinds import Derived, KindSpec
from silkfire.quality.frames import OK as JSON_OK
from silkfire.quality.report import GateResult

STUDENT, TEACHER = "student", "teacher"
TURN_TYPE = {STUDENT: "response", TEACHER: "feedback"}
HINT = "fix the dialogue generator (or the file) and validate again"

SCHEMA: dict[str, str | tuple[str, ...]] = {
    "image": "text",
    "question": "dict",
    "conversations": "list",
    "groundtruth": "dict",
    "source": "text",
    "round": "int",
    "score": "list",
    "split": ("text", "missing"),
    "img_path": ("text", "missing"),
    "human_rating": ("list", "missing"),
}

_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)?")


# ---- the rules, one record at a time ---------------------------------------------------------------------------
def leak_key(groundtruth: str, cfg: FireConfig) -> tuple[str, bool] | None:
    """The normalised ground truth to look for and whether it is a number; None when it is not checked.

    Normalised: case-folded, whitespace collapsed, a trailing "." dropped. Checked when it is a number (any
    length: "9", "3.5") or has at least ``leak_min_chars`` characters, and is not in ``leak_ignore``
    (answers like "yes"/"no" occur in any prose).
    """
    key = " ".join(groundtruth.casefold().split()).rstrip(".").strip()
    if not key or key in cfg.leak_ignore:
        return None
    number = _NUMBER.fullmatch(key) is not None
    if not number and len(key) < cfg.leak_min_chars:
        return None
    return key, number


def mentions(text: str, key: str, number: bool) -> bool:
    """Whether ``key`` occurs in ``text`` (already normalised like the key) as a whole word or number.

    The characters around the occurrence must not be letters/digits/"_" (where the key itself starts/ends
    with one); a number must also not be part of a longer number ("9" is not in "19", "9.5", "0.9" or "-9").
    """
    start = 0
    size = len(key)
    left_word, right_word = _word(key[0]), _word(key[-1])
    while True:
        at = text.find(key, start)
        if at < 0:
            return False
        before = text[at - 1] if at else " "
        after = text[at + size] if at + size < len(text) else " "
        good = not (left_word and _word(before)) and not (right_word and _word(after))
        if good and number:
            next_digit = at + size + 1 < len(text) and text[at + size + 1].isdigit()
            good = before not in ".-," and not (after in ".," and next_digit)
        if good:
            return True
        start = at + 1


def _word(char: str) -> bool:
    return char.isalnum() or char == "_"


def _normalise(text: str, spaced: bool) -> str:
    text = text.casefold()
    return " ".join(text.split()) if spaced else text


def leaks(turns: Sequence[dict[str, Any]], key: tuple[str, bool]) -> str:
    """"ok", or which teacher turn reveals the ground truth.

    A leak: the normalised ground truth occurs (see :func:`mentions`) in a teacher's Feedback text while the
    student's response just before does not contain it; a teacher confirming the student's own (correct)
    answer reveals nothing.
    """
    text_key, number = key
    spaced = " " in text_key
    for position in range(1, len(turns), 2):
        raw = turns[position]["value"]
        if number and text_key not in raw:  # digits have no case: most turns end here, without copies
            continue
        feedback = _normalise(feedback_text(raw), spaced)
        if text_key not in feedback or not mentions(feedback, text_key, number):
            continue
        student = _normalise(turns[position - 1]["value"], spaced)
        if text_key in student and mentions(student, text_key, number):
            continue
        return (f"turn {position + 1} (teacher): the feedback reveals the ground truth {text_key!r}, which the "
                "student has not said")
    return OK


def _dialog_text(value: Any, name: str) -> tuple[str | None, str | None]:
    """(value text, status) of a {"role", "value"} object; status None when the field is not an object."""
    if type(value) is not dict:
        return None, None  # the type check reports it
    text = value.get("value")
    if type(text) is not str:
        return None, f"{name}.value is {'missing' if text is None else type(text).__name__}, expected a string"
    if not text.strip():
        return None, f"{name}.value is blank"
    if type(value.get("role")) is not str:
        return text, f"{name}.role is missing or not a string"
    return text, OK


DERIVED = ("image__path", "question__value", "question__status", "question__tokens", "groundtruth__status",
           "groundtruth__tokens", "conversations__status", "conversations__tokens", "round__turns", "score__parsed",
           "score__agreement", "feedback__leak")  # derive_fire's columns, in order

_ROLES = [STUDENT, TEACHER] * 32  # expected roles/types of dialogues up to 32 rounds (longer: the slow path)
_TYPES = [TURN_TYPE[STUDENT], TURN_TYPE[TEACHER]] * 32


def _turns(turns: list[Any], short: int, low: int, high: int) -> tuple[str, int | None, list[int | None]]:
    """The turns in one go: (structure status, an out-of-bounds token count or None, teacher scores).

    Structure: turns alternate student "response" / teacher "feedback", starting with the student and ending
    with the teacher, no blank text. A well-formed dialogue takes the fast path (list comprehensions, list
    equality); anything else the slow one, which names the first bad turn.
    """
    count = len(turns)
    try:
        roles = [turn["role"] for turn in turns]
        kinds = [turn["type"] for turn in turns]
        values = [turn["value"] for turn in turns]
    except (TypeError, KeyError):
        return _turns_slow(turns, short, low, high)
    try:  # every value a non-blank string (str.isspace raises TypeError on anything else)
        blank = not all(values) or any(map(str.isspace, values))
    except TypeError:
        blank = True
    if (blank or not count or count % 2 or count > len(_ROLES) or roles != _ROLES[:count]
            or kinds != _TYPES[:count]):
        return _turns_slow(turns, short, low, high)
    tokens = None
    if max(map(len, values)) >= short:
        counts = [len(value.split()) for value in values if len(value) >= short]
        bad = [n for n in counts if n > high or n < low]
        tokens = max(bad) if bad else None
    return OK, tokens, [parse_score(value) for value in values[1::2]]


def _turns_slow(turns: list[Any], short: int, low: int, high: int) -> tuple[str, int | None, list[int | None]]:
    status = OK if turns else "no turns"
    tokens: int | None = None
    scores: list[int | None] = []
    for position, turn in enumerate(turns):
        if type(turn) is not dict:
            if status is OK:
                status = f"turn {position + 1} is {type(turn).__name__}, expected an object {{role, type, value}}"
            continue
        role, value = turn.get("role"), turn.get("value")
        if status is OK:
            expected = STUDENT if position % 2 == 0 else TEACHER
            if role != expected:
                status = (f"turn {position + 1}: role {role!r}, expected {expected!r} (turns alternate student, "
                          "teacher, ... starting with the student)")
            elif turn.get("type") != TURN_TYPE[expected]:
                status = f"turn {position + 1} ({role}): type {turn.get('type')!r}, expected {TURN_TYPE[expected]!r}"
            elif type(value) is not str:
                status = f"turn {position + 1} ({role}): value is {type(value).__name__}, expected a string"
            elif not value.strip():
                status = f"turn {position + 1} ({role}): empty text"
        if type(value) is not str:
            continue
        if len(value) >= short:
            count = len(value.split())
            if count > high or count < low:
                tokens = count if tokens is None else max(tokens, count)
        if role == TEACHER:
            scores.append(parse_score(value))
    if status is OK and len(turns) % 2:
        status = f"ends with a student turn (turn {len(turns)}); a dialogue ends with the teacher's feedback"
    return status, tokens, scores


def derive_fire(records: Sequence[dict[str, Any]], status: Sequence[str], cfg: FireConfig,
                config: QualityConfig) -> Derived:
    """Per-record status columns of the FIRE rules (one pass over the chunk; see the module docstring)."""
    low, high = config.min_tokens, config.max_tokens_for("fire")
    short = 2 * high - 1 if low <= 1 else -1  # a string shorter than this cannot exceed `high` tokens
    smin, smax = cfg.scores
    names = DERIVED
    columns: dict[str, list[Any]] = {name: [] for name in names}
    (image_path, q_value, q_status, q_tokens, gt_status, gt_tokens, conv_status, conv_tokens, round_turns,
     score_parsed, score_agree, leak) = (columns[name].append for name in names)
    nothing = (conv_status, conv_tokens, round_turns, score_parsed, score_agree, leak)
    final_scores: Counter[str] = Counter()
    image_field = cfg.image_field
    for record, ok in zip(records, status):
        if ok != JSON_OK:
            for name in names:
                columns[name].append(None)
            continue
        path = record.get(image_field)
        image_path(path if type(path) is str else None)
        text, state = _dialog_text(record.get("question"), "question")
        q_value(text)
        q_status(state)
        q_tokens(None if text is None or len(text) < short else len(text.split()))
        gt, state = _dialog_text(record.get("groundtruth"), "groundtruth")
        gt_status(state)
        gt_tokens(None if gt is None or len(gt) < short else len(gt.split()))

        turns = record.get("conversations")
        if type(turns) is not list:
            for append in nothing:
                append(None)
            continue
        structure, tokens, scores = _turns(turns, short, low, high)
        conv_status(structure)
        conv_tokens(tokens)
        rounds = record.get("round")
        teachers = len(scores)
        if type(rounds) is int:
            round_turns(OK if rounds == teachers else f"round {rounds} but {teachers} teacher turn(s)")
        else:
            round_turns(None)
        problem = OK
        for number, score in enumerate(scores, start=1):
            if score is None:
                problem = f"teacher turn {number}: no integer on a 'Score:' line"
                break
            if not smin <= score <= smax:
                problem = f"teacher turn {number}: score {score} outside {smin}..{smax}"
                break
        score_parsed(problem if scores else None)
        stored = record.get("score")
        if problem is OK and scores and type(stored) is list:
            score_agree(OK if stored == scores else f"score {stored} but the teacher turns say {scores}")
            final_scores[str(scores[-1])] += 1
        else:
            score_agree(None)
        if structure is OK and gt is not None:
            key = leak_key(gt, cfg)
            leak(OK if key is None else leaks(turns, key))
        else:
            leak(None)
    return Derived(columns, {"final_score": final_scores})


# ---- the same rules over columns: which rows certainly pass (silkfire.quality.columnar) ---------------------------
_DIALOG = pa.struct([("role", pa.string()), ("value", pa.string())])
_TURN = pa.struct([("role", pa.string()), ("type", pa.string()), ("value", pa.string())])
ARROW_SCHEMA = pa.schema([
    ("image", pa.string()), ("question", _DIALOG), ("conversations", pa.list_(_TURN)), ("groundtruth", _DIALOG),
    ("source", pa.string()), ("round", pa.int64()), ("score", pa.list_(pa.int64())), ("split", pa.string()),
    ("img_path", pa.string()),
])
# "Score: 7." / "Score: 5/10.": the Score line first, the integer right after it (parse_score's answer for
# such turns); any other layout is left to parse_score itself
_SCORE_AT_START = r"^Score: *(?P<score>\d{1,9})(?:\D|$)"


def screen_fire(table: pa.Table, cfg: FireConfig, config: QualityConfig) -> Screen | None:
    """The rows of an Arrow block that pass every rule of :func:`derive_fire` and the schema, proven over
    columns; None when the block has no rows or every text needs a token count (``min_tokens > 1``)."""
    low, high = config.min_tokens, config.max_tokens_for("fire")
    rows = table.num_rows
    if low > 1 or not rows:
        return None
    short = 2 * high - 1  # as derive_fire: a shorter string cannot exceed `high` tokens
    table = table.combine_chunks()
    column = {name: table.column(name).chunk(0) for name in table.column_names}

    def dialog(name: str) -> tuple[pa.Array, np.ndarray]:  # {role: str, value: non-blank str}, no count needed
        value = pc.struct_field(column[name], "value")
        role_ok = as_mask(pc.is_valid(pc.struct_field(column[name], "role")))
        return value, visible(value) & shorter(value, short) & role_ok

    question, clean = dialog("question")
    groundtruth, gt_ok = dialog("groundtruth")
    clean &= gt_ok & visible(column["image"]) & visible(column["source"]) & as_mask(pc.is_valid(column["round"]))
    for name in ("split", "img_path"):  # absent, or a non-blank string
        clean &= ~as_mask(pc.is_valid(column[name])) | visible(column[name])

    turns, teachers, scores = _turn_columns(column["conversations"], rows, short)
    clean &= turns & as_mask(pc.equal(column["round"], pa.array(teachers.count)))
    clean &= teachers.in_range(*cfg.scores) & _stored_scores_agree(column["score"], teachers, rows)
    clean &= ~_maybe_leaks(groundtruth, teachers, clean, cfg)

    final = scores[teachers.start[clean] + teachers.count[clean] - 1]  # every clean row has a teacher turn
    values, tally = np.unique(final, return_counts=True)
    keep = pa.array(clean)
    image_path = objects(column[cfg.image_field].filter(keep))
    return Screen(
        clean=clean,
        types={"image": "text", "question": "dict", "conversations": "list", "groundtruth": "dict",
               "source": "text", "round": "int", "score": "list", "human_rating": "missing",
               **{name: np.where(as_mask(pc.is_valid(column[name]))[clean], "text", "missing")
                  for name in ("split", "img_path")}},
        values={name: objects(column[name].filter(keep)) for name in ("image", "source", "round", "split", "img_path")},
        derived={name: image_path if name == "image__path" else objects(question.filter(keep))
                 if name == "question__value"
                 else None if name.endswith("__tokens") else OK for name in DERIVED},
        counts={"final_score": Counter({str(value): int(count) for value, count in zip(values, tally)})},
    )


class _Teachers:
    """The teacher turns of a block, in order: their parsed scores (-1: not the simple layout), rows, and per row
    where its teacher turns start and how many there are."""

    def __init__(self, values: pa.Array, scores: np.ndarray, parents: np.ndarray, rows: int) -> None:
        self.values, self.scores, self.parents = values, scores, parents
        self.count = np.bincount(parents, minlength=rows)
        self.start = np.cumsum(self.count) - self.count

    def in_range(self, low: int, high: int) -> np.ndarray:
        """Per row: every teacher turn has a Score line read here, within [low, high]."""
        return per_row_all((self.scores >= low) & (self.scores <= high), self.parents, len(self.count))


def _turn_columns(conversations: pa.ListArray, rows: int, short: int) -> tuple[np.ndarray, _Teachers, np.ndarray]:
    """(rows whose turns alternate student "response" / teacher "feedback" from the student to the teacher, none
    blank or long enough to count, the teacher turns, their scores)."""
    lengths = np.asarray(pc.fill_null(pc.list_value_length(conversations), 0).to_numpy(), dtype=np.int64)
    flat = conversations.flatten()
    parents = np.asarray(pc.list_parent_indices(conversations).to_numpy(), dtype=np.int64)
    position = np.arange(len(flat)) - (np.cumsum(lengths) - lengths)[parents]
    student = position % 2 == 0
    role, kind, value = (pc.struct_field(flat, name) for name in ("role", "type", "value"))
    role_ok = np.where(student, as_mask(pc.equal(role, STUDENT)), as_mask(pc.equal(role, TEACHER)))
    kind_ok = np.where(student, as_mask(pc.equal(kind, TURN_TYPE[STUDENT])),
                       as_mask(pc.equal(kind, TURN_TYPE[TEACHER])))
    turn_ok = role_ok & kind_ok & visible(value) & shorter(value, short)
    ok = as_mask(pc.is_valid(conversations)) & (lengths >= 2) & (lengths % 2 == 0) & per_row_all(turn_ok, parents, rows)
    teacher = np.flatnonzero(~student)
    values = value.take(pa.array(teacher))
    parsed = pc.struct_field(pc.extract_regex(values, _SCORE_AT_START), "score")
    scores = np.asarray(pc.fill_null(pc.cast(parsed, pa.int64()), -1).to_numpy(), dtype=np.int64)
    return ok, _Teachers(values, scores, parents[teacher], rows), scores


def _stored_scores_agree(stored: pa.ListArray, teachers: _Teachers, rows: int) -> np.ndarray:
    """Per row: the stored ``score`` list equals the teacher turns' scores, element by element."""
    lengths = np.asarray(pc.fill_null(pc.list_value_length(stored), -1).to_numpy(), dtype=np.int64)
    flat = stored.flatten()
    parents = np.asarray(pc.list_parent_indices(stored).to_numpy(), dtype=np.int64)
    position = np.arange(len(flat)) - (np.cumsum(np.maximum(lengths, 0)) - np.maximum(lengths, 0))[parents]
    inside = position < teachers.count[parents]
    at = np.where(inside, teachers.start[parents] + position, 0)
    values = np.asarray(pc.fill_null(flat, -1).to_numpy(), dtype=np.int64)
    same = inside & as_mask(pc.is_valid(flat)) & (values == teachers.scores[at]) if len(flat) else inside
    return (lengths == teachers.count) & per_row_all(same, parents, rows)


def _maybe_leaks(groundtruth: pa.Array, teachers: _Teachers, clean: np.ndarray, cfg: FireConfig) -> np.ndarray:
    """Rows (among ``clean``) where :func:`leaks` might find a leak: a teacher's Feedback holds the ground truth
    (for a phrase: its first word). A superset: :func:`leaks` decides on these rows."""
    encoded = pc.dictionary_encode(groundtruth)
    keys = [None if text is None else leak_key(text, cfg) for text in encoded.dictionary.to_pylist()]
    probes = [None if key is None else (key[0] if key[1] else key[0].split()[0], key[1]) for key in keys]
    key_of_row = np.asarray(pc.fill_null(encoded.indices, -1).to_numpy(), dtype=np.int64)
    checked = np.array([probe is not None for probe in probes] + [False])[key_of_row] & clean
    turns = np.flatnonzero(checked[teachers.parents])
    hits = np.zeros(len(clean), dtype=bool)
    texts = teachers.values.take(pa.array(turns)).to_pylist()
    for turn, text in zip(turns.tolist(), texts):
        row = teachers.parents[turn]
        probe, number = probes[key_of_row[row]]
        if number and probe not in text:  # digits have no case: most turns end here, before any copy
            continue
        if probe in (feedback_text(text) if number else feedback_text(text).casefold()):
            hits[row] = True
    return hits


def fire_checks(frame: Any, cfg: FireConfig, config: QualityConfig) -> list[Check]:
    smin, smax = cfg.scores
    rmin, rmax = cfg.rounds
    return [
        is_ok("question__status", "'question' is {role, value} with a non-empty value", HINT, field="question"),
        is_ok("groundtruth__status", "'groundtruth' is {role, value} with a non-empty value", HINT,
              field="groundtruth"),
        is_ok("conversations__status",
              "'conversations' alternate student 'response' and teacher 'feedback' turns, starting with the student "
              "and ending with the teacher, none blank", HINT, field="conversations"),
        between("round", rmin, rmax, f"'round' lies in {rmin}..{rmax}", HINT + " (or widen quality.fire.rounds)"),
        is_ok("round__turns", "'round' equals the number of teacher turns", HINT, field="round"),
        is_ok("score__parsed",
              f"every teacher turn has a 'Score:' line whose first integer lies in {smin}..{smax}", HINT,
              field="conversations"),
        Check("expect_column_values_to_be_in_set",
              {"column": "score__agreement", "value_set": [OK], "mostly": cfg.score_agreement},
              f"'score' equals the scores parsed from the teacher turns (in at least {cfg.score_agreement:.0%} of "
              "the records: upstream stores N/10 scores wrongly; consumers re-parse the turns)", HINT, field="score"),
        is_ok("feedback__leak",
              "no teacher feedback reveals the ground truth the student has not said (docs/quality.md: the leak rule)",
              "rewrite the feedback without the answer (the FIRE teacher must not tell the ground truth); " + HINT,
              field="conversations"),
    ]


SPEC = KindSpec(
    kind="fire",
    schema=SCHEMA,
    keep=("image", "source", "round", "split", "img_path"),
    hint=HINT,
    derive=derive_fire,
    table_checks=fire_checks,
    duplicate=("image", "question__value"),
    texts=(),  # question, groundtruth and turns are nested: derive_fire counts their tokens
    image="image__path",
    image_field="image",
    profile_columns=(("round", "round"), ("source", "source")),
    columnar=Columnar(ARROW_SCHEMA, screen_fire, optional=("split", "img_path"), unread=("human_rating",)),
)


def validate_fire(
    path: str | Path,
    config: QualityConfig,
    report_dir: str | Path,
    image_root: str | Path | None = None,
    *,
    previous_profile: str | Path | None = None,
    progress: bool = False,
) -> GateResult:
    """Validate a FIRE dialogue file (FIRE-100K / FIRE-Bench JSON lists, JSONL or parquet) against the FIRE rules;
    see :func:`silkfire.data.published.validate_published`."""
    from silkfire.data.published import validate_published  # parquet: converted, images extracted safely

    return validate_published(SPEC, path, config, report_dir, image_root, previous_profile=previous_profile,
                              progress=progress)
