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

PARAMS = ("quality", "silkie.sample.source", "silkie.sample.image_root", "paths.world", "paths.feedback",
          "paths.reports")


def run_gate(kind: str, path: Path, cfg: DictConfig, root: Path, reports: Path, image_root: Path) -> dict[str, Any]:
    """Run one file gate, publish its reports to MLflow, raise GateFailed on failure; returns its summary.

    Shared by `validate_feedback` (kind vlfeedback) and `pairs` (kind pairs)."""

    from silkfire.io import write_json
    from silkfire.quality import GateFailed, QualityConfig
    from silkfire.quality.cli import validate
    from silkfire.stages.gated import record_verdict
    from silkfire.tracking.gates import log_gate_reports, tag_gate

    result = validate(kind, path, QualityConfig.from_mapping(cfg.quality), reports, image_root)
    (reports / "report.md").write_text(result.to_markdown(), encoding="utf-8")
    write_json(reports / "failures.json", result.failure_rows())
    record_verdict(reports, [result], root, reports.name)  # what `dpo` checks (silkfire.stages.gated)
    log_gate_reports(reports)
    tag_gate(result.success, str(result.summary().get("policy", "")), kind)
    if not result.success:
        raise GateFailed(result)
    return {k: v for k, v in result.summary().items() if not isinstance(v, str)}


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    reports = report_dir(cfg, root)
    reports.mkdir(parents=True, exist_ok=True)
    return run_gate("vlfeedback", root / cfg.paths.feedback / ANNOTATED, cfg, root, reports,
                    feedback_image_root(cfg, root))


def summary(metrics: dict[str, Any]) -> str:
    text = f"gate passed: {metrics.get('expectations', '?')} expectations on {metrics.get('rows', '?')} records"
    if metrics.get("rows_quarantined"):
        text += f", {metrics['rows_quarantined']} quarantined"
    return text
