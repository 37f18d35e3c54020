"""MME scoring with the official rules (eval_tool ``calculation.py`` of the MME benchmark).

Parser (``parse_yes_no``), exactly as the official tool:
``p = response.lower()``; if ``p`` is ``"yes"`` or ``"no"`` it is the label; otherwise look at the first four
characters ``p[:4]``: ``"yes"`` in it -> yes; else ``"no"`` in it -> no; else ``"other"`` (always wrong).

*No stripping.* The official tool lower-cases the response and does not strip it, so ``"  yes"`` (leading
blanks) is ``"other"``, while a trailing newline is harmless (``"yes\\n"[:4]`` holds "yes"). We follow it
exactly; lmms-eval (strip + drop ".") and VLMEvalKit (word search anywhere) parse differently and give
different scores, so always report which parser was used: this one is "mme-official".
Consequences worth knowing: "Yes, there is" -> yes; "The answer is yes" -> other; "no." -> no;
"Nope" -> no ("nope"[:4] holds "no"); "Not sure" -> no; "none" -> no.

Scores per category (MME "subtask"): ``acc`` = share of its questions answered correctly; ``acc_plus`` = share
of its images (question_ids) whose questions are *all* correct; ``score = 100*acc + 100*acc_plus`` (0..200).
Perception = sum of the scores of the perception categories present, cognition likewise.

The ground truth is compared lower-cased, as the official tool does (it asserts it is "yes" or "no").
The official tool asserts exactly two questions per image. Here a question_id with another number of
questions is still scored (acc+ counts it correct when all of its questions are) and a warning names it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from silkfire.data.published import read_located
from silkfire.io import checked_records

PARSER_NAME = "mme-official"
GROUPS = ("perception", "cognition")
REQUIRED_FIELDS = ("question_id", "category", "question", "answer", "prediction")

MME_CATEGORY_GROUPS: Mapping[str, str] = MappingProxyType(
    {
        **{
            category: "perception"
            for category in (
                "existence",
                "count",
                "position",
                "color",
                "posters",
                "celebrity",
                "scene",
                "landmark",
                "artwork",
                "OCR",
            )
        },
        **{
            category: "cognition"
            for category in ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
        },
    }
)
# The shapes world adds one cognition category of its own.
WORLD_CATEGORY_GROUPS: Mapping[str, str] = MappingProxyType({**MME_CATEGORY_GROUPS, "comparison": "cognition"})


def parse_yes_no(response: str) -> str:
    """The official MME parser: 'yes', 'no' or 'other' (see the module docstring; no stripping)."""
    text = response.lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def _checked_groups(category_groups: Mapping[str, str]) -> dict[str, str]:
    groups = dict(category_groups)
    bad = {category: group for category, group in groups.items() if group not in GROUPS}
    if bad:
        raise ValueError(f"MME category groups must be 'perception' or 'cognition'; got {bad}")
    return groups


def _check_record(index: int, record: Mapping[str, Any], groups: Mapping[str, str]) -> tuple[str, str, str, str]:
    """(question_id, category, truth 'yes'/'no', prediction) of a record, or a ValueError saying what is wrong."""
    question_id = record.get("question_id", "<missing>")
    where = f"MME record {index} (question_id {question_id!r})"
    for field in REQUIRED_FIELDS:
        if field not in record or record[field] is None:
            raise ValueError(f"{where}: missing field {field!r}; records need {list(REQUIRED_FIELDS)}")
    for field in ("question_id", "category", "question", "prediction"):
        if not isinstance(record[field], str):
            raise ValueError(f"{where}: field {field!r} must be a string, got {type(record[field]).__name__}")
    answer = record["answer"]
    if not isinstance(answer, str) or answer.lower() not in ("yes", "no"):
        raise ValueError(f"{where}: field 'answer' must be 'Yes' or 'No', got {answer!r}")
    category = record["category"]
    if category not in groups:
        raise ValueError(
            f"{where}: field 'category' has unknown category {category!r}; declare its group with "
            f"category_groups / extra_groups={{{category!r}: 'perception' | 'cognition'}} "
            f"(known: {sorted(groups)})"
        )
    return record["question_id"], category, answer.lower(), record["prediction"]


def score_mme(
    records: Iterable[Mapping[str, Any]], category_groups: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Official MME scores of predictions.

    ``records``: dicts with question_id, category, question, answer ("Yes"/"No") and prediction (the raw
    model response). ``category_groups``: category -> "perception" | "cognition" (default
    ``WORLD_CATEGORY_GROUPS``, the 14 MME categories plus the world's "comparison").
    Returns ``{"perception": float, "cognition": float, "subtasks": {category: {"acc", "acc_plus", "score"}}}``
    with acc/acc_plus in 0..1 and score in 0..200; subtasks in the order of ``category_groups``.
    """
    groups = _checked_groups(WORLD_CATEGORY_GROUPS if category_groups is None else category_groups)
    # category -> question_id -> [correct?, ...], in first-seen order
    results: dict[str, dict[str, list[bool]]] = {}
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ValueError(f"MME record {index}: expected an object, got {type(record).__name__}")
        question_id, category, truth, prediction = _check_record(index, record, groups)
        results.setdefault(category, {}).setdefault(question_id, []).append(parse_yes_no(prediction) == truth)

    odd = [
        f"{category}:{question_id} ({len(marks)})"
        for category, images in results.items()
        for question_id, marks in images.items()
        if len(marks) != 2
    ]
    if odd:
        shown = ", ".join(odd[:5]) + (f" and {len(odd) - 5} more" if len(odd) > 5 else "")
        warnings.warn(
            f"MME: {len(odd)} question_id(s) do not have exactly 2 questions: {shown}; acc+ counts such an "
            "image correct when all of its questions are (the official tool assumes pairs)",
            stacklevel=2,
        )

    subtasks: dict[str, dict[str, float]] = {}
    totals = {group: 0.0 for group in GROUPS}
    for category in [c for c in groups if c in results]:
        images = results[category]
        marks = [mark for image in images.values() for mark in image]
        acc = sum(marks) / len(marks)
        acc_plus = sum(all(image) for image in images.values()) / len(images)
        score = 100.0 * acc + 100.0 * acc_plus
        subtasks[category] = {"acc": acc, "acc_plus": acc_plus, "score": score}
        totals[groups[category]] += score
    return {"perception": totals["perception"], "cognition": totals["cognition"], "subtasks": subtasks}


def score_mme_file(path: str | Path, extra_groups: Mapping[str, str] | None = None) -> dict[str, Any]:
    """:func:`score_mme` of a JSONL file or a JSON list of records; ``extra_groups`` declares more categories
    (added to ``WORLD_CATEGORY_GROUPS``; a name already there is regrouped).

    Every bad record is reported at once (:class:`silkfire.io.RecordErrors`: file, line/record, field); an
    empty file is an error (nothing to score)."""
    groups = _checked_groups({**WORLD_CATEGORY_GROUPS, **dict(extra_groups or {})})
    # JSONL, a JSON list or parquet (rows named 'FILE: row N'; image bytes are not read)
    records = checked_records(path, *read_located(path), lambda index, record: _check_record(index, record, groups),
                              "no MME records (an empty file?): nothing to score")
    return score_mme(records, groups)


def cap_pairs(records: list[dict[str, Any]], max_items: int | None) -> list[dict[str, Any]]:
    """The first `max_items` questions, never splitting the two questions of an image (acc+ needs both)."""
    if not max_items or len(records) <= max_items:
        return records
    kept: list[dict[str, Any]] = []
    allowed: set[str] = set()
    for record in records:
        qid = record["question_id"]
        if qid not in allowed:
            if len(kept) >= max_items:
                continue
            allowed.add(qid)
        kept.append(record)
    return kept
