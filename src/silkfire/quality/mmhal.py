"""MMHal-Bench items through the gate.

Record: ``{"question_type", "question_topic", "image_id", "image_content": [labels], "question",
"gt_answer"}`` (+ optional ``image_src`` (a URL, not checked), ``image_path`` (checked like every image),
``model_answer``). Rules: ``question_type`` one of the 8 types, items interleaved so that the type of item i
(0-based, in file order) is ``types[i % 8]`` (the benchmark's per-type scores rely on it; this check cannot be
fixed by dropping rows, so policy filter fails on it too), ``image_content`` a list of strings, no duplicate
(image_id, question).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from silkfire.quality.config import MMHalConfig, QualityConfig
from silkfire.quality.derive import OK
from silkfire.quality.gate import Check, in_set, is_ok
from silkfire.quality.kinds import Derived, KindSpec
from silkfire.quality.frames import derived_column
from silkfire.quality.frames import OK as JSON_OK
from silkfire.quality.report import GateResult

HINT = "fix the benchmark export (or the file by hand) and validate again"

SCHEMA: dict[str, str | tuple[str, ...]] = {
    "question_type": "text",
    "question_topic": "text",
    "image_id": "text",
    "image_content": "list",
    "question": "text",
    "gt_answer": "text",
    "image_src": ("text", "missing"),
    "image_path": ("text", "missing"),
    "model_answer": ("str", "missing"),
}


def derive_mmhal(records: Sequence[dict[str, Any]], status: Sequence[str], cfg: MMHalConfig,
                 config: QualityConfig) -> Derived:
    content: list[Any] = []
    for record, ok in zip(records, status):
        labels = record.get("image_content") if ok == JSON_OK else None
        if type(labels) is not list:
            content.append(None)  # the type check reports it
        elif not all(type(label) is str and label.strip() for label in labels):
            content.append("holds a non-string or blank label")
        else:
            content.append(OK)
    return Derived({"image_content__status": content})


def mmhal_checks(frame: pd.DataFrame, cfg: MMHalConfig, config: QualityConfig) -> list[Check]:
    types = list(cfg.types)
    checks = [
        in_set("question_type", types, f"'question_type' is one of the {len(types)} MMHal types", HINT),
        is_ok("image_content__status", "'image_content' is a list of non-empty labels", HINT,
              field="image_content"),
    ]
    if cfg.check_order:
        order = []
        for position, kind in enumerate(frame["question_type"].tolist()):
            expected = types[position % len(types)]
            if kind is None or (isinstance(kind, float) and kind != kind):
                order.append(None)
            else:
                order.append(OK if kind == expected else f"item {position} is {kind!r}, expected {expected!r}")
        frame["question_type__order"] = derived_column("question_type__order", order)
        checks.append(is_ok(
            "question_type__order", f"items interleave the types: item i (0-based) has type types[i % {len(types)}]",
            "restore the published order (per-type scores use i % 8); dropping items shifts every later one",
            field="question_type", filterable=False,
        ))
    return checks


SPEC = KindSpec(
    kind="mmhal",
    schema=SCHEMA,
    keep=("question_type", "question_topic", "image_id", "question", "gt_answer", "image_path"),
    hint=HINT,
    derive=derive_mmhal,
    table_checks=mmhal_checks,
    duplicate=("image_id", "question"),
    image="image_path",
    image_field="image_path",
    profile_columns=(("question_type", "question_type"), ("question_topic", "question_topic")),
    texts=("question", "gt_answer"),
)


def validate_mmhal(
    path: str | Path,
    config: QualityConfig,
    report_dir: str | Path,
    image_root: str | Path | None = None,
    *,
    previous_profile: str | Path | None = None,
    progress: bool = False,
) -> GateResult:
    """Validate an MMHal-Bench file (response_template.json, JSONL or parquet); see
    :func:`silkfire.data.published.validate_published`."""
    from silkfire.data.published import validate_published  # parquet: converted, images extracted safely

    return validate_published(SPEC, path, config, report_dir, image_root, previous_profile=previous_profile,
                              progress=progress)
