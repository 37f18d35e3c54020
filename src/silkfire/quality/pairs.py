"""Preference pairs (the input of DPO) through the gate. The record format is defined in docs/quality.md:

``{"id", "prompt", "image" | "img_path", "chosen", "rejected", "chosen_score", "rejected_score"}`` plus
optional provenance (``source_id``, ``chosen_model``, ``rejected_model``, ``aspect``, ...; other keys are
ignored). Rules: an image path (``image``, else ``img_path``), chosen and rejected non-blank, both scores numbers
(not booleans), ``chosen_score > rejected_score`` (by more than ``pairs.min_margin``), unique ids; and under
``pairs.rule`` ``strict`` (the default of a file checked on its own) also chosen and rejected different (after
collapsing whitespace) and no duplicate (image, prompt, chosen, rejected).

Under ``pairs.rule`` ``silkie`` (what the `pairs` stage builds by default: vlf-silkie's run_dpo.py) those two are
allowed: the released code forms all C(4, 2) pairs of each record's completions without comparing texts, so when
several policies give the same answer ("Yes") the same (prompt, chosen, rejected) texts come from different
completion pairs (different ids, still unique), and two equal texts rated differently make a pair.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from silkfire.quality.config import PairsConfig, QualityConfig
from silkfire.quality.derive import OK
from silkfire.quality.gate import Check, greater, is_ok
from silkfire.quality.kinds import Derived, KindSpec, validate_file
from silkfire.quality.frames import OK as JSON_OK
from silkfire.quality.report import GateResult

HINT = "fix the pair builder that wrote this file (or the file by hand) and validate again"
NUMBER = ("int", "float")

SCHEMA: dict[str, str | tuple[str, ...]] = {
    "id": "text",
    "prompt": "text",
    "image": ("text", "missing"),
    "img_path": ("text", "missing"),
    "chosen": "text",
    "rejected": "text",
    "chosen_score": NUMBER,
    "rejected_score": NUMBER,
    "chosen_model": ("text", "missing"),
    "rejected_model": ("text", "missing"),
}
MARGIN_BINS = ((0.5, "<0.5"), (1.0, "0.5-1"), (2.0, "1-2"))  # profile: margins of chosen over rejected


def _margin_bin(margin: float) -> str:
    for limit, label in MARGIN_BINS:
        if margin < limit:
            return label
    return ">=2"


def _number(value: Any) -> float | None:
    return float(value) if type(value) in (int, float) else None


def derive_pairs(records: Sequence[dict[str, Any]], status: Sequence[str], cfg: PairsConfig,
                 config: QualityConfig) -> Derived:
    names = ("image__path", "image__given", "chosen__differs", "score__margin")
    columns: dict[str, list[Any]] = {name: [] for name in names}
    margins: Counter[str] = Counter()
    for record, ok in zip(records, status):
        if ok != JSON_OK:
            for name in names:
                columns[name].append(None)
            continue
        image, img_path = record.get("image"), record.get("img_path")
        path = image if type(image) is str else img_path if type(img_path) is str else None
        columns["image__path"].append(path)
        columns["image__given"].append(OK if path is not None else "neither 'image' nor 'img_path' is a string")
        chosen, rejected = record.get("chosen"), record.get("rejected")
        if type(chosen) is str and type(rejected) is str and chosen.strip() and rejected.strip():
            same = " ".join(chosen.split()) == " ".join(rejected.split())
            columns["chosen__differs"].append("chosen == rejected" if same else OK)
        else:
            columns["chosen__differs"].append(None)  # the text checks report it
        high, low = _number(record.get("chosen_score")), _number(record.get("rejected_score"))
        margin = None if high is None or low is None else high - low
        columns["score__margin"].append(margin)
        if margin is not None and margin > 0:
            margins[_margin_bin(margin)] += 1
    return Derived(columns, {"margin": margins})


def pairs_checks(frame: Any, cfg: PairsConfig, config: QualityConfig) -> list[Check]:
    checks = [is_ok("image__given", "every pair names its image ('image' or 'img_path')", HINT, field="image")]
    if cfg.rule == "strict":
        checks.append(is_ok("chosen__differs", "'chosen' differs from 'rejected' (whitespace aside)",
                            "drop the pair (nothing to prefer); " + HINT, field="chosen"))
    # Under silkie a pair whose chosen and rejected texts are equal is kept: its DPO gradient is exactly zero (the
    # policy and the reference give both sides the same log-probabilities, so the logit is 0 whatever the model),
    # it only dilutes the batch -- but vlf-silkie keeps such pairs and the paper trained on them, so the gate
    # accepts what the reproduced rule produces; rule strict (the builder's and the gate's) refuses them.
    checks += [
        greater("chosen_score", "rejected_score", "'chosen_score' is greater than 'rejected_score'",
                "swap chosen and rejected, or drop ties; " + HINT),
    ]
    if cfg.min_margin > 0:
        checks.append(Check(
            "expect_column_values_to_be_between",
            {"column": "score__margin", "min_value": cfg.min_margin, "strict_min": True},
            f"chosen_score - rejected_score is greater than {cfg.min_margin}", HINT, field="chosen_score",
        ))
    return checks


SPEC = KindSpec(
    kind="pairs",
    schema=SCHEMA,
    keep=("id", "prompt", "chosen", "rejected", "chosen_score", "rejected_score"),
    hint=HINT,
    derive=derive_pairs,
    table_checks=pairs_checks,
    ids=("id",),
    duplicate=("image__path", "prompt", "chosen", "rejected"),
    image="image__path",
    image_field="image",
    texts=("prompt", "chosen", "rejected"),
)
# rule silkie: repeated (image, prompt, chosen, rejected) texts are allowed (ids stay unique: one per completion pair)
SPECS = {"strict": SPEC, "silkie": replace(SPEC, duplicate=())}


def validate_pairs(
    path: str | Path,
    config: QualityConfig,
    report_dir: str | Path,
    image_root: str | Path | None = None,
    *,
    previous_profile: str | Path | None = None,
    progress: bool = False,
) -> GateResult:
    """Validate a preference-pair file (JSONL or a JSON list) under ``config.pairs.rule``; see :func:`validate_file`."""
    return validate_file(SPECS[config.pairs.rule], path, config, report_dir, image_root, previous_profile=previous_profile,
                         progress=progress)
