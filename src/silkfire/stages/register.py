"""Stage `register`: the champion/challenger gate on the model the sft stage registered.

It reads the version number from metrics/sft.json and the evaluation from metrics/evaluate.json, compares with the
version holding `register.alias` (silkfire.tracking.champion) and moves the alias only when the new one wins. The
decision goes to the model version's tags, this run's tags, and a comparison table (reports/register/).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from silkfire.stages import Dep, Out

PARAMS = ("register", "tracking.log_model", "paths.metrics", "paths.reports")
DEPS = (
    Dep("${paths.metrics}/sft.json",
        "the registered version"),
    Dep("${paths.metrics}/evaluate.json",
        "its evaluation"),
)
OUTS = (
    Out("${paths.reports}/register", cache=False),
)


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    import mlflow
    from mlflow import MlflowClient

    from silkfire.io import write_json
    from silkfire.tracking.champion import run_gate

    metrics_dir = root / cfg.paths.metrics
    sft = json.loads((metrics_dir / "sft.json").read_text(encoding="utf-8"))
    if not cfg.tracking.log_model or "registered_version" not in sft:
        mlflow.set_tag("silkfire.decision", "skipped: no registered model (tracking.log_model is false)")
        return {"promoted": False, "skipped": True}
    evaluation = json.loads((metrics_dir / "evaluate.json").read_text(encoding="utf-8"))
    name, alias, version = str(cfg.register.model), str(cfg.register.alias), int(sft["registered_version"])
    rule = settings(cfg)
    decision, champion = run_gate(MlflowClient(), name, version, alias, rule, evaluation)

    out_dir = root / cfg.paths.reports / "register"
    out_dir.mkdir(parents=True, exist_ok=True)
    table = decision.markdown(f"v{version}", None if champion is None else f"v{champion}")
    (out_dir / "decision.md").write_text(table, encoding="utf-8")
    write_json(out_dir / "comparison.json", decision.rows)
    mlflow.log_text(table, "register/decision.md")
    mlflow.set_tags({"silkfire.decision": "promoted" if decision.promote else "rejected",
                     "silkfire.decision_reason": decision.reason,
                     "silkfire.challenger": f"{name}/{version}",
                     "silkfire.champion_before": "none" if champion is None else f"{name}/{champion}",
                     "mlflow.note.content": table})  # the whole decision as the run's description
    return {"promoted": decision.promote, "challenger_version": version,
            "champion_version_before": champion, "reason": decision.reason}


def summary(metrics: dict[str, Any]) -> str:
    if metrics.get("skipped"):
        return "skipped (no registered model)"
    before = metrics.get("champion_version_before")
    verdict = "promoted to champion" if metrics.get("promoted") else "champion kept"
    return f"v{metrics.get('challenger_version')} {verdict} (was {'none' if before is None else f'v{before}'})"


def settings(cfg: DictConfig) -> Any:
    """The champion rule (``register``), parsed; it refuses a test-set metric (silkfire.selection)."""
    from silkfire.tracking.champion import ChampionRule

    return ChampionRule.from_mapping(OmegaConf.to_container(cfg.register, resolve=True))


def check(cfg: DictConfig) -> None:
    """Parse the typed settings this stage reads (silkfire.stages.runner.check_config: before any stage runs)."""
    settings(cfg)
