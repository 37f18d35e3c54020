"""The rule every choice obeys: decide on validation figures, never on test figures.

Test sets (the world's `mme.jsonl`, `open.jsonl`, the MMHal-style and FIRE-Bench test items) give the figures a
run reports; a figure that steered a choice (the champion gate, a sweep's best point, a recipe grid's ranking) is
no longer an unbiased estimate. Evaluation stages write their test figures at the top level of their metrics and
their validation figures under `val`; the selection code asks this module before it reads one.
"""

from __future__ import annotations

VAL_SEGMENT = "val"
# stages whose metrics are benchmark figures: outside their `val` block, every figure is a test figure
EVALUATION_STAGES = ("evaluate", "evaluate_dpo", "fire_bench")
# the world files that hold test items: selection code never opens them (tests/test_selection.py watches)
TEST_FILES = ("mme.jsonl", "open.jsonl")


class SelectionError(ValueError):
    """A choice was asked to read a test figure."""


def is_test_figure(stage: str, key: str) -> bool:
    """Whether ``key`` (dotted) of ``metrics/<stage>.json`` is a test-set figure."""
    return stage in EVALUATION_STAGES and VAL_SEGMENT not in key.split(".")


def require_validation_metric(stage: str, key: str, where: str) -> None:
    """Refuse (:class:`SelectionError`, saying what to use instead) to choose on a test figure."""
    if is_test_figure(stage, key):
        raise SelectionError(
            f"{where}: {stage}.{key} is a test-set figure, and choices are made on validation figures only (a "
            f"figure that steered a choice is no longer an unbiased estimate of it); use the validation key "
            f"{stage}.{VAL_SEGMENT}.{key}")
