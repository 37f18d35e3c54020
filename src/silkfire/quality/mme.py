"""MME items (lmms-lab/MME field names; the world's mme.jsonl has the same layout) through the gate.

Record: ``{"question_id", "category", "question", "answer", "image"?}``. Rules: answer exactly one of
``mme.answers`` ("Yes"/"No"), category one of ``mme.categories``, question ending with MME's suffix, exactly
2 records per question_id, one "Yes" and one "No" (under policy filter the pair goes together), no duplicate
(question_id, question). Image paths, when given, are checked like every image.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from silkfire.quality import derive
from silkfire.quality.config import MMEConfig, QualityConfig
from silkfire.quality.gate import Check, between, in_set, is_ok, matches
from silkfire.quality.kinds import KindSpec
from silkfire.quality.frames import derived_column
from silkfire.quality.report import GateResult

HINT = "fix the benchmark export (or the file by hand) and validate again"

SCHEMA: dict[str, str | tuple[str, ...]] = {
    "question_id": "text",
    "category": "text",
    "question": "text",
    "answer": "text",
    "image": ("text", "missing"),
}


def mme_checks(frame: pd.DataFrame, cfg: MMEConfig, config: QualityConfig) -> list[Check]:
    answers = list(cfg.answers)
    checks = [in_set("answer", answers, f"'answer' is exactly one of {answers}", HINT)]
    if cfg.categories is not None:
        checks.append(in_set("category", cfg.categories, "'category' is an MME category",
                             "use a known category or add it to quality.mme.categories"))
    if cfg.question_suffix is not None:
        checks.append(matches("question", re.escape(cfg.question_suffix.strip()) + r"\s*$",
                              f"'question' ends with {cfg.question_suffix.strip()!r}", HINT))
    keys = frame["question_id"].tolist()
    frame["question_id__rows"] = derived_column("question_id__rows", derive.group_sizes(keys))
    frame["answer__pair"] = derived_column(
        "answer__pair", derive.group_composition(keys, frame["answer"].tolist(), {a: 1 for a in answers}))
    checks += [
        between("question_id__rows", 2, 2, "exactly 2 records share each question_id", HINT),
        is_ok("answer__pair", f"each question_id has exactly one {answers[0]!r} and one {answers[-1]!r} answer",
              HINT, field="answer"),
    ]
    return checks


SPEC = KindSpec(
    kind="mme",
    schema=SCHEMA,
    keep=("question_id", "category", "question", "answer", "image"),
    hint=HINT,
    table_checks=mme_checks,
    duplicate=("question_id", "question"),
    image="image",
    image_field="image",
    group="question_id",
    profile_columns=(("answer", "answer"), ("category", "category")),
    texts=("question",),
)


def validate_mme(
    path: str | Path,
    config: QualityConfig,
    report_dir: str | Path,
    image_root: str | Path | None = None,
    *,
    previous_profile: str | Path | None = None,
    progress: bool = False,
) -> GateResult:
    """Validate an MME-format file (JSONL, a JSON list, or lmms-lab/MME parquet with image bytes); see
    :func:`silkfire.data.published.validate_published`."""
    from silkfire.data.published import validate_published  # parquet: converted, images extracted safely

    return validate_published(SPEC, path, config, report_dir, image_root, previous_profile=previous_profile,
                              progress=progress)

