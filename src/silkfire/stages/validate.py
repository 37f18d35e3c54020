"""Stage `validate`: the data-quality gate (Great Expectations) on the generated world.

The report (text, JSON, Data Docs HTML) is written and logged to MLflow before the verdict, so a failed gate
still leaves everything a person needs to see what is wrong; a failure raises GateFailed and stops the
pipeline before any training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

PARAMS = ("quality", "paths.world", "paths.reports")
FAILURE_REPORT = "report.md"  # the flow publishes it as a Prefect artefact when the gate fails


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    import mlflow

    from silkfire.quality import GateFailed, QualityConfig, validate_world

    report_dir = root / cfg.paths.reports / "validate"
    result = validate_world(root / cfg.paths.world, QualityConfig.from_mapping(cfg.quality), report_dir)
    (report_dir / FAILURE_REPORT).write_text(result.to_markdown(), encoding="utf-8")
    mlflow.log_artifacts(str(report_dir), artifact_path="validation")
    mlflow.set_tag("silkfire.gate", "passed" if result.success else "failed")
    if not result.success:
        raise GateFailed(result)
    return result.summary()


def summary(metrics: dict[str, Any]) -> str:
    return f"gate passed: {metrics.get('expectations', '?')} expectations on {metrics.get('rows', '?')} rows"
