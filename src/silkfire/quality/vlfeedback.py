"""VLFeedback records (MMInstruction/VLFeedback) through the gate.

Record: ``{"id", "prompt", "models": [4 names], "completions", "img_path"}`` where ``completions`` is either
a list of ``{"model", "response", "annotations"}`` or the column-wise form the HF viewer shows
(``{"model": [...], "response": [...], "annotations": [...]}``); ``annotations`` maps each aspect
("Helpfulness", "Visual Faithfulness", "Ethical Considerations") to ``{"Rating": "1".."5" (a string),
"Rationale": str}``. Rules: 4 completions per prompt, ``models`` names the completions' models, every
response non-blank, the 3 aspects present, every Rating a string holding an integer in 1..5 ("N/A", "6", ""
and 4 (an int) are flagged with their path: ``completions[2].annotations['Helpfulness'].Rating``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from silkfire.quality.config import QualityConfig, VLFeedbackConfig
from silkfire.quality.derive import OK
from silkfire.quality.gate import Check, between, is_ok
from silkfire.quality.kinds import Derived, KindSpec
from silkfire.quality.frames import OK as JSON_OK
from silkfire.quality.report import GateResult

HINT = "fix the sampling/annotation stage that wrote this file (or the file by hand) and validate again"
COLUMN_KEYS = ("model", "response", "annotations")

SCHEMA: dict[str, str | tuple[str, ...]] = {
    "id": "text",
    "prompt": "text",
    "models": "list",
    "completions": ("list", "dict"),
    "img_path": "text",
}


def completions_of(value: Any) -> tuple[list[Any] | None, str]:
    """The completions as a list of objects, from either published layout; (None, why) when unreadable."""
    if type(value) is list:
        return value, OK
    if type(value) is dict:
        missing = [key for key in COLUMN_KEYS if type(value.get(key)) is not list]
        if missing:
            return None, f"column-wise completions lack the list(s) {missing}"
        sizes = {key: len(value[key]) for key in COLUMN_KEYS}
        if len(set(sizes.values())) > 1:
            return None, "column-wise completions have lists of different lengths " + ", ".join(
                f"{key} {size}" for key, size in sizes.items())
        return [dict(zip(COLUMN_KEYS, row)) for row in zip(*(value[key] for key in COLUMN_KEYS))], OK
    return None, "not a list or column-wise object"  # the type check reports it


def parse_rating(value: Any, low: int, high: int) -> int | None:
    """The integer in a Rating string ("4", " 4 ") when it lies in [low, high]; None otherwise."""
    if type(value) is not str:
        return None
    text = value.strip()
    if not text.isdigit():
        return None
    rating = int(text)
    return rating if low <= rating <= high else None


def _record(
    completions: list[Any], models: Any, cfg: VLFeedbackConfig, short: int, low_tokens: int, high_tokens: int,
    ratings: dict[str, Counter[str]],
) -> tuple[str, str, str, str, str, int | None]:
    """(structure, models, response, aspects, rating) statuses and an out-of-bounds response token count."""
    structure = response = aspects = rating = OK
    tokens: int | None = None
    low, high = cfg.ratings
    names: list[Any] = []
    for index, completion in enumerate(completions):
        where = f"completions[{index}]"
        if type(completion) is not dict:
            structure = structure if structure != OK else f"{where} is {type(completion).__name__}, expected an object"
            continue
        names.append(completion.get("model"))
        text = completion.get("response")
        if type(text) is not str:
            if response == OK:
                response = f"{where}.response is {'missing' if text is None else type(text).__name__}"
        elif not text.strip():
            if response == OK:
                response = f"{where}.response is blank"
        elif len(text) >= short:
            count = len(text.split())
            if not low_tokens <= count <= high_tokens:
                tokens = count if tokens is None else max(tokens, count)
        notes = completion.get("annotations")
        if type(notes) is not dict:
            if aspects == OK:
                aspects = f"{where}.annotations is {'missing' if notes is None else type(notes).__name__}"
            continue
        for aspect in cfg.aspects:
            note = notes.get(aspect)
            if type(note) is not dict:
                if aspects == OK:
                    aspects = f"{where}.annotations lacks {aspect!r}"
                continue
            if aspects == OK and type(note.get("Rationale")) is not str:
                aspects = f"{where}.annotations[{aspect!r}].Rationale is missing or not a string"
            value = note.get("Rating")
            parsed = parse_rating(value, low, high)
            if parsed is None:
                if rating == OK:
                    rating = (f"{where}.annotations[{aspect!r}].Rating = {value!r}: not a string holding an integer "
                              f"in {low}..{high}")
            else:
                ratings[aspect][str(parsed)] += 1
    if type(models) is not list:
        model_status = None  # the type check reports it
    elif not all(type(name) is str and name.strip() for name in models):
        model_status = "models holds a non-string or blank name"
    elif len(models) != cfg.completions:
        model_status = f"models has {len(models)} names, expected {cfg.completions}"
    elif all(type(name) is str for name in names) and sorted(models) != sorted(names):
        model_status = f"models {models} differ from the completions' models {names}"
    else:
        model_status = OK
    return structure, model_status, response, aspects, rating, tokens


def derive_vlfeedback(records: Sequence[dict[str, Any]], status: Sequence[str], cfg: VLFeedbackConfig,
                      config: QualityConfig) -> Derived:
    low_tokens, high_tokens = config.min_tokens, config.max_tokens_for("vlfeedback")
    short = 2 * high_tokens - 1 if low_tokens <= 1 else -1
    names = ("completions__status", "completions__count", "models__status", "completions__response",
             "annotations__aspects", "annotations__rating", "completions__tokens")
    columns: dict[str, list[Any]] = {name: [] for name in names}
    ratings: dict[str, Counter[str]] = {aspect: Counter() for aspect in cfg.aspects}
    for record, ok in zip(records, status):
        completions, why = completions_of(record.get("completions")) if ok == JSON_OK else (None, "")
        if completions is None:
            for name in names:
                columns[name].append(None)
            if ok == JSON_OK and type(record.get("completions")) in (list, dict):
                columns["completions__status"][-1] = why
            continue
        values = _record(completions, record.get("models"), cfg, short, low_tokens, high_tokens, ratings)
        structure, models, response, aspects, rating, tokens = values
        for name, value in zip(names, (structure, len(completions), models, response, aspects, rating, tokens)):
            columns[name].append(value)
    counts = {f"rating.{aspect}": counter for aspect, counter in ratings.items()}
    return Derived(columns, counts)


def vlfeedback_checks(frame: Any, cfg: VLFeedbackConfig, config: QualityConfig) -> list[Check]:
    low, high = cfg.ratings
    aspects = ", ".join(repr(aspect) for aspect in cfg.aspects)
    return [
        is_ok("completions__status",
              "'completions' is a list of {model, response, annotations} or the column-wise "
              "{model: [...], response: [...], annotations: [...]} with lists of equal length", HINT,
              field="completions"),
        between("completions__count", cfg.completions, cfg.completions,
                f"every prompt has exactly {cfg.completions} completions", HINT, field="completions"),
        is_ok("models__status", f"'models' lists the {cfg.completions} completions' model names", HINT,
              field="models"),
        is_ok("completions__response", "every completion has a non-empty 'response'", HINT, field="completions"),
        is_ok("annotations__aspects", f"every completion is annotated on {aspects}, each with a 'Rationale' string",
              HINT, field="completions"),
        is_ok("annotations__rating", f"every 'Rating' is a string holding an integer in {low}..{high}",
              "re-run the judge on these completions (a pair builder would skip them silently); " + HINT,
              field="completions"),
    ]


SPEC = KindSpec(
    kind="vlfeedback",
    schema=SCHEMA,
    keep=("id", "prompt", "img_path"),
    hint=HINT,
    derive=derive_vlfeedback,
    table_checks=vlfeedback_checks,
    ids=("id",),
    duplicate=("img_path", "prompt"),
    image="img_path",
    image_field="img_path",
    texts=("prompt",),
)


def validate_vlfeedback(
    path: str | Path,
    config: QualityConfig,
    report_dir: str | Path,
    image_root: str | Path | None = None,
    *,
    previous_profile: str | Path | None = None,
    progress: bool = False,
) -> GateResult:
    """Validate a VLFeedback file (the JSONL export, a JSON list, or parquet with or without image bytes; either
    completions layout); see :func:`silkfire.data.published.validate_published`."""
    from silkfire.data.published import validate_published  # parquet: converted, images extracted safely

    return validate_published(SPEC, path, config, report_dir, image_root, previous_profile=previous_profile,
                              progress=progress)
