"""Stage `register_fire`: registers the FIRE student and teacher that `fire_student` / `fire_teacher` logged, as new
versions of `fire.sft.registered_student` / `registered_teacher` with `tracking.candidate_alias` (each version's run
is its training run). Registering here, not in the training stages, makes the registry's names params of this stage
only: renaming a model re-registers it and never retrains (issue 15). FIRE has no champion rule yet: FIRE-Bench's
figures are reported, and promotion is a person's decision (`silkfire models`, the MLflow registry page).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from silkfire.stages import Dep, Out

PARAMS = ("fire.sft.registered_student", "fire.sft.registered_teacher", "tracking.log_model",
          "tracking.candidate_alias", "paths.metrics", "paths.reports")
DEPS = (
    Dep("${paths.metrics}/fire_student.json", "the student model fire_student logged"),
    Dep("${paths.metrics}/fire_teacher.json", "the teacher model fire_teacher logged"),
)
OUTS = (
    Out("${paths.reports}/register_fire", cache=False),
)
ROLES = ("student", "teacher")


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    import json

    import mlflow

    from silkfire.io import write_json
    from silkfire.tracking.registry import register_logged

    versions: dict[str, str] = {}
    for role in ROLES:
        trained = json.loads((root / cfg.paths.metrics / f"fire_{role}.json").read_text(encoding="utf-8"))
        if not cfg.tracking.log_model or "logged_model" not in trained:
            continue
        name = str(cfg.fire.sft[f"registered_{role}"])
        versions[role] = f"{name}/{register_logged(trained['logged_model'], name, str(cfg.tracking.candidate_alias))}"
    write_json(root / cfg.paths.reports / "register_fire" / "registered.json", versions)
    mlflow.set_tags({f"silkfire.registered.{role}": version for role, version in versions.items()})
    return {"registered": versions, "skipped": not versions}


def summary(metrics: dict[str, Any]) -> str:
    if metrics.get("skipped"):
        return "skipped (no logged model: tracking.log_model is false)"
    return ", ".join(f"{role} {version}" for role, version in metrics.get("registered", {}).items())
