"""Stage `validate`: the data-quality gate (Great Expectations) on the generated world.

The report (text, JSON, Markdown, Data Docs HTML) is written and logged to MLflow before the verdict, so a failed
gate still leaves everything a person needs; a failure raises GateFailed and stops the pipeline before any
training. Distributions are compared with the last version that passed *of the same world config*: its profile is
kept in `metrics/validate_profile.json` (a persistent DVC output) under the world config's fingerprint, so a smoke
run in a workspace that ran the full world, and the next full run, each compare with their own previous version
(a changed world config is an intended change of the data, not drift). Under `quality.world.policy: filter` bad rows are
quarantined and training reads the clean copies (see `gated_file`).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from silkfire.artefacts import gated_file  # noqa: F401 -- defined with the other artefact paths
from silkfire.artefacts import world_report_dir as report_dir
from silkfire.stages import Dep, Out

PARAMS = ("quality", "world", "paths.world", "paths.reports", "paths.metrics")
DEPS = (
    Dep("${paths.world}"),
)
OUTS = (
    Out("${paths.reports}/validate"),
    Out("${paths.metrics}/validate_profile.json", cache=False, persist=True,
        note="the last passing world's profile: drift baseline"),
)
FAILURE_REPORT = "report.md"  # the flow publishes it as a Prefect artefact when the gate fails
FAILURE_TABLE = "failures.json"  # ... and this one as a Prefect table artefact
PROFILE = "validate_profile.json"  # under paths.metrics: the profile of the last world that passed


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    from silkfire.io import write_json
    from silkfire.quality import GateFailed, QualityConfig, validate_world
    from silkfire.quality.verdict import record_verdict
    from silkfire.tracking.gates import log_gate_reports, tag_gate

    reports = report_dir(cfg, root)
    profiles = root / cfg.paths.metrics / PROFILE
    key = world_key(cfg)
    with tempfile.TemporaryDirectory() as scratch:
        result = validate_world(
            root / cfg.paths.world, QualityConfig.from_mapping(cfg.quality), reports,
            previous_profile=baseline_profile(profiles, key, Path(scratch)),
        )
    (reports / FAILURE_REPORT).write_text(result.to_markdown(), encoding="utf-8")
    write_json(reports / FAILURE_TABLE, result.failure_rows())
    record_verdict(reports, [result], root, "validate")  # what training stages check (silkfire.quality.verdict)
    log_gate_reports(reports)
    tag_gate(result.success, str(result.summary().get("policy", "")))
    if not result.success:
        raise GateFailed(result)
    if (reports / "profile.json").is_file():
        remember_profile(profiles, key, reports / "profile.json")
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


def world_key(cfg: DictConfig) -> str:
    """The fingerprint of the world config: the data version a drift baseline belongs to."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(cfg.world, resolve=True)
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def baseline_profile(profiles: Path, key: str, scratch: Path) -> Path | None:
    """The profile of the last passing world of config ``key`` (written to ``scratch`` for the gate), or None.
    A profile file of the old one-profile format is the previous version, whatever its config."""
    if not profiles.is_file():
        return None
    stored = json.loads(profiles.read_text(encoding="utf-8"))
    if "by_world" not in stored:
        return profiles
    if key not in stored["by_world"]:
        return None  # the first version of this world config: nothing to drift from
    path = scratch / "previous_profile.json"
    path.write_text(json.dumps(stored["by_world"][key]), encoding="utf-8")
    return path


def remember_profile(profiles: Path, key: str, profile: Path) -> None:
    """Keep ``profile`` as the baseline of world config ``key``, beside the other configs' baselines."""
    stored = json.loads(profiles.read_text(encoding="utf-8")) if profiles.is_file() else {}
    by_world = dict(stored.get("by_world", {}))
    by_world[key] = json.loads(profile.read_text(encoding="utf-8"))
    profiles.parent.mkdir(parents=True, exist_ok=True)  # a first run by hand, before any metrics file
    profiles.write_text(json.dumps({"by_world": by_world}, indent=1, sort_keys=True) + "\n", encoding="utf-8")

