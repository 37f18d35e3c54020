"""VLFeedback records: read them exactly as published, normalise to one row form, write JSONL.

Published layouts accepted (JSONL, or one JSON list of objects -- sniffed by :func:`silkfire.io.iter_records`):

- ``completions`` as a list of per-completion objects ``[{"model", "response", "annotations"}, ...]``;
- ``completions`` column-wise, as the HF dataset (``MMInstruction/VLFeedback``) yields a Sequence of struct:
  ``{"model": [...], "response": [...], "annotations": [...]}`` (lists of equal length).

Row form returned by :func:`read_feedback` / :func:`normalise_record` (key order fixed)::

    {"id": str, "prompt": str, "models": [str, ...], "img_path": str,
     "completions": [{"model": str, "response": str, "annotations": {...} | None}, ...]}

plus any extra keys of the input record (e.g. ``scene_id``, ``answer`` written by the sampler), kept after the
standard ones. ``annotations`` maps an aspect to ``{"Rating": "4", "Rationale": "..."}``; ratings stay
*strings* exactly as published (``"N/A"`` and other non-numeric ratings are kept -- :mod:`silkfire.vlfeedback.pair_rule`
skips them). Records not yet judged (the sampler's output) may have ``annotations`` missing or ``None``;
pass ``require_annotations=True`` to insist on them. ``models`` missing -> taken from the completions.

Bad input raises :class:`FeedbackFormatError` (a ``ValueError``) naming file, line (JSONL) or record index
(JSON list) and the field path, e.g. ``data.jsonl:3: completions[2].annotations['Helpfulness'].Rating: ...``;
whatever goes wrong with one record (a line that is not UTF-8 or not JSON, a NUL character in an id, path or
model name, a number too large) is that record's error, never a bare exception. :func:`read_feedback` with
``all_errors=True`` reads on past bad records and raises one error listing every one of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from silkfire.io import RecordErrors, RecordFileError, iter_located, write_jsonl

ASPECTS = ("Helpfulness", "Visual Faithfulness", "Ethical Considerations")
COMPLETION_KEYS = ("model", "response", "annotations")
STANDARD_KEYS = ("id", "prompt", "models", "completions", "img_path")


class FeedbackFormatError(ValueError):
    """A VLFeedback record is malformed; the message names file, line/record and field."""


class FeedbackErrors(FeedbackFormatError, RecordErrors):
    """Several VLFeedback records are malformed: ``messages`` lists them all (file, line/record, field)."""


def rating_value(rating: Any) -> float | None:
    """The number in a published Rating (``"4"``, ``" 4 "``, ``"3.5"``); ``None`` when non-numeric (``"N/A"``).

    Ints/floats are accepted too (some exports drop the quotes); booleans are not numbers here.
    """
    if isinstance(rating, bool):
        return None
    if isinstance(rating, (int, float)):
        return float(rating)
    if isinstance(rating, str):
        try:
            value = float(rating.strip())
        except ValueError:
            return None
        return value if value == value and abs(value) != float("inf") else None
    return None


def _completions(value: Any, where: str) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        missing = [key for key in ("model", "response") if not isinstance(value.get(key), list)]
        if missing:
            raise FeedbackFormatError(f"{where}: completions: column-wise form lacks the list(s) {missing}")
        columns = {key: value.get(key) for key in COMPLETION_KEYS}
        if columns["annotations"] is None:
            columns["annotations"] = [None] * len(columns["model"])
        if not isinstance(columns["annotations"], list):
            raise FeedbackFormatError(f"{where}: completions.annotations: expected a list, "
                                      f"got {type(columns['annotations']).__name__}")
        sizes = {key: len(column) for key, column in columns.items()}
        if len(set(sizes.values())) != 1:
            raise FeedbackFormatError(f"{where}: completions: column-wise lists differ in length {sizes}")
        return [dict(zip(COMPLETION_KEYS, row)) for row in zip(*columns.values())]
    raise FeedbackFormatError(f"{where}: completions: expected a list or a column-wise object, "
                              f"got {type(value).__name__}")


def _annotations(value: Any, where: str, required: bool) -> dict[str, dict[str, Any]] | None:
    if value is None:
        if required:
            raise FeedbackFormatError(f"{where}: missing (the record is not annotated)")
        return None
    if not isinstance(value, dict):
        raise FeedbackFormatError(f"{where}: expected an object of aspects, got {type(value).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for aspect, note in value.items():
        here = f"{where}[{aspect!r}]"
        if not isinstance(note, dict):
            raise FeedbackFormatError(f"{here}: expected {{'Rating', 'Rationale'}}, got {type(note).__name__}")
        if "Rating" not in note:
            raise FeedbackFormatError(f"{here}.Rating: missing")
        rating = note["Rating"]
        if isinstance(rating, bool) or not isinstance(rating, (str, int, float)):
            raise FeedbackFormatError(f"{here}.Rating: expected a string, got {type(rating).__name__}")
        if isinstance(rating, int) and abs(rating) > 10**15:  # would overflow a float (or lose digits)
            raise FeedbackFormatError(f"{here}.Rating: expected a rating such as \"4\", got a {len(str(rating))}-digit "
                                      "number")
        rationale = note.get("Rationale", "")
        if not isinstance(rationale, str):
            raise FeedbackFormatError(f"{here}.Rationale: expected a string, got {type(rationale).__name__}")
        # ratings are strings in the published data; numbers from other exports are turned into strings
        text = rating if isinstance(rating, str) else (str(int(rating)) if float(rating).is_integer() else str(rating))
        out[str(aspect)] = {"Rating": text, "Rationale": rationale}
    if required:
        missing = [aspect for aspect in ASPECTS if aspect not in out]
        if missing:
            raise FeedbackFormatError(f"{where}: lacks the aspect(s) {missing}")
    return out


def normalise_record(record: Mapping[str, Any], where: str = "record",
                     require_annotations: bool = False) -> dict[str, Any]:
    """One VLFeedback record (either layout) in row form; ``where`` prefixes error messages (``file:line``)."""
    if not isinstance(record, Mapping):
        raise FeedbackFormatError(f"{where}: expected an object, got {type(record).__name__}")
    for key in ("id", "prompt", "img_path"):
        value = record.get(key)
        if not isinstance(value, str) or (key != "prompt" and not value.strip()):
            got = "missing" if value is None else f"{type(value).__name__} {value!r}"[:80]
            raise FeedbackFormatError(f"{where}: {key}: expected a non-empty string, got {got}")
        if key != "prompt" and "\x00" in value:
            raise FeedbackFormatError(f"{where}: {key}: holds a NUL character (\\u0000): {value!r}"[:200])
    if "completions" not in record:
        raise FeedbackFormatError(f"{where}: completions: missing")
    completions = []
    for index, completion in enumerate(_completions(record["completions"], where)):
        here = f"{where}: completions[{index}]"
        if not isinstance(completion, Mapping):
            raise FeedbackFormatError(f"{here}: expected an object, got {type(completion).__name__}")
        model, response = completion.get("model"), completion.get("response")
        if not isinstance(model, str) or not model.strip() or "\x00" in model:
            raise FeedbackFormatError(f"{here}.model: expected a non-empty string without NUL, got {model!r}"[:200])
        if not isinstance(response, str):
            raise FeedbackFormatError(f"{here}.response: expected a string, got {type(response).__name__}")
        notes = _annotations(completion.get("annotations"), f"{here}.annotations", require_annotations)
        completions.append({"model": model, "response": response, "annotations": notes})
    models = record.get("models")
    if models is None:
        models = [completion["model"] for completion in completions]
    elif not isinstance(models, list) or not all(isinstance(name, str) for name in models):
        raise FeedbackFormatError(f"{where}: models: expected a list of strings, got {models!r}"[:200])
    row = {"id": record["id"], "prompt": record["prompt"], "models": list(models), "completions": completions,
           "img_path": record["img_path"]}
    row.update({key: value for key, value in record.items() if key not in STANDARD_KEYS})
    return row


def iter_feedback(path: str | Path, require_annotations: bool = False,
                  errors: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Yield the records of a VLFeedback file in row form (see the module docstring).

    A bad record raises :class:`FeedbackFormatError` naming file, line/record and field; with ``errors`` (a list)
    its message goes there instead and reading goes on."""
    located = iter_located(path, errors)
    while True:
        try:
            where, raw = next(located)
        except StopIteration:
            return
        except RecordFileError as error:
            raise FeedbackFormatError(str(error)) from error
        try:
            row = normalise_record(raw, where, require_annotations)
        except FeedbackFormatError as error:
            if errors is None:
                raise
            errors.append(str(error))
            continue
        except Exception as error:  # noqa: BLE001 -- whatever one record does, it is that record's error
            message = f"{where}: cannot read the record ({type(error).__name__}: {error})"[:500]
            if errors is None:
                raise FeedbackFormatError(message) from error
            errors.append(message)
            continue
        yield row


def read_feedback(path: str | Path, require_annotations: bool = False, *,
                  all_errors: bool = False) -> list[dict[str, Any]]:
    """All records of a VLFeedback file (JSONL or JSON list, either completions layout) in row form.

    ``all_errors``: read every record and raise one :class:`FeedbackErrors` naming all the bad ones (else the
    first bad record raises)."""
    if not all_errors:
        return list(iter_feedback(path, require_annotations))
    errors: list[str] = []
    rows = list(iter_feedback(path, require_annotations, errors))
    if errors:
        raise FeedbackErrors(path, errors)
    return rows


def write_feedback(path: str | Path, records: Iterable[Mapping[str, Any]]) -> int:
    """Write row-form records as JSONL (list-of-objects completions); returns the count."""
    return write_jsonl(path, records)
