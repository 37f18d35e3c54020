"""Stage `validate`: the data-quality gate (Great Expectations) on the generated world.

The report (text, JSON, Markdown, Data Docs HTML) is written and logged to MLflow before the verdict, so a failed
gate still leaves everything a person needs; a failure raises GateFailed and stops the pipeline before any
training. Distributions are compared with the last world version that passed (its profile is kept in
`metrics/validate_profile.json`, a persistent DVC output). Under `quality.world.policy: filter` bad rows are
quarantined and training reads the clean copies (see `gated_file`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from silkfire.artefacts import gated_file  # noqa: F401 -- defined with the other artefact paths
from silkfire.artefacts import world_report_dir as report_dir

PARAMS = ("quality", "paths.world", "paths.reports", "paths.metrics")
FAILURE_REPORT = "report.md"  # the flow publishes it as a Prefect artefact when the gate fails
FAILURE_TABLE = "failures.json"  # ... and this one as a Prefect table artefact
PROFILE = "validate_profile.json"  # under paths.metrics: the profile of the last world that passed


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    from silkfire.io import write_json
    from silkfire.quality import GateFailed, QualityConfig, validate_world
    from silkfire.quality.verdict import record_verdict
    from silkfire.tracking.gates import log_gate_reports, tag_gate

    reports = report_dir(cfg, root)
    profile = root / cfg.paths.metrics / PROFILE
    result = validate_world(
        root / cfg.paths.world, QualityConfig.from_mapping(cfg.quality), reports,
        previous_profile=profile if profile.is_file() else None,
    )
    (reports / FAILURE_REPORT).write_text(result.to_markdown(), encoding="utf-8")
    write_json(reports / FAILURE_TABLE, result.failure_rows())
    record_verdict(reports, [result], root, "validate")  # what training stages check (silkfire.quality.verdict)
    log_gate_reports(reports)
    tag_gate(result.success, str(result.summary().get("policy", "")))
    if not result.success:
        raise GateFailed(result)
    if (reports / "profile.json").is_file():
        profile.parent.mkdir(parents=True, exist_ok=True)  # a first run by hand, before any metrics file
        shutil.copyfile(reports / "profile.json", profile)
    return {k: v for k, v in result.summary().items() if not isinstance(v, str)}


def summary(metrics: dict[str, Any]) -> str:
    text = f"gate passed: {metrics.get('expectations', '?')} expectations on {metrics.get('rows', '?')} rows"
    if metrics.get("rows_quarantined"):
        text += f", {metrics['rows_quarantined']} quarantined"
    return text


def check(cfg: DictConfig) -> None:
    """Parse the typed settings this stage reads (silkfire.stages.runner.check_config: before any stage runs)."""
    from silkfire.quality import QualityConfig

    QualityConfig.from_mapping(cfg.quality)
