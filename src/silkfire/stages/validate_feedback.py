"""Stage `validate_feedback`: the `vlfeedback` data-quality gate on the judged records.

Policy from `quality.vlfeedback.policy` (else `quality.policy`; fail by default): a failure stops the branch
before pairs are built, with the report (text, Markdown, Data Docs) logged to MLflow; under `filter` the bad
records are quarantined and `pairs` reads the clean copy (see :func:`gated_feedback`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from silkfire.artefacts import ANNOTATED, feedback_image_root, gated_feedback  # noqa: F401 -- re-exported
from silkfire.artefacts import FEEDBACK_GATE as REPORT
from silkfire.artefacts import feedback_report_dir as report_dir
from silkfire.stages import Dep, Out

PARAMS = ("quality", "silkie.sample.source", "silkie.sample.image_root", "paths.world", "paths.feedback",
          "paths.reports")
DEPS = (
    Dep("${paths.feedback}/annotated.jsonl"),
    Dep("${paths.world}"),
)
OUTS = (
    Out("${paths.reports}/validate_feedback"),
)


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    reports = report_dir(cfg, root)
    reports.mkdir(parents=True, exist_ok=True)
    from silkfire.tracking.gates import run_file_gate

    return run_file_gate("vlfeedback", root / cfg.paths.feedback / ANNOTATED, cfg, root, reports,
                    feedback_image_root(cfg, root))


def summary(metrics: dict[str, Any]) -> str:
    text = f"gate passed: {metrics.get('expectations', '?')} expectations on {metrics.get('rows', '?')} records"
    if metrics.get("rows_quarantined"):
        text += f", {metrics['rows_quarantined']} quarantined"
    return text


def check(cfg: DictConfig) -> None:
    """Parse the typed settings this stage reads (silkfire.stages.runner.check_config: before any stage runs)."""
    from silkfire.quality import QualityConfig

    QualityConfig.from_mapping(cfg.quality)
