"""Stage `register`: registers the model the sft stage logged, then the champion/challenger gate on it.

It registers the logged model of metrics/sft.json as a new version of `tracking.registered_model` (alias
`tracking.candidate_alias`; the version's run is the SFT run), reads the evaluation from metrics/evaluate.json,
compares with the version holding `register.alias` (silkfire.tracking.champion) and moves the alias only when the new
one wins. The decision goes to the model version's tags, this run's tags, and a comparison table (reports/register/).
Registering here, not in `sft`, makes the registry's names params of this stage only: a rename never retrains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from silkfire.stages import Dep, Out

PARAMS = ("register", "tracking.log_model", "tracking.candidate_alias", "paths.metrics", "paths.reports")
DEPS = (
    Dep("${paths.metrics}/sft.json",
        "the model the sft stage logged (registered here)"),
    Dep("${paths.metrics}/evaluate.json",
        "its evaluation"),
)
OUTS = (
    Out("${paths.reports}/register", cache=False),
)


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    from silkfire.tracking.champion import gate_stage

    metrics_dir = root / cfg.paths.metrics
    return gate_stage(settings(cfg), str(cfg.register.model), str(cfg.register.alias), metrics_dir / "sft.json",
                      metrics_dir / "evaluate.json", root / cfg.paths.reports / "register",
                      log_model=bool(cfg.tracking.log_model), candidate_alias=str(cfg.tracking.candidate_alias))


def summary(metrics: dict[str, Any]) -> str:
    from silkfire.tracking.champion import gate_summary

    return gate_summary(metrics)


def settings(cfg: DictConfig) -> Any:
    """The champion rule (``register``), parsed; it refuses a test-set metric (silkfire.selection)."""
    from silkfire.tracking.champion import ChampionRule

    return ChampionRule.from_mapping(OmegaConf.to_container(cfg.register, resolve=True))


def check(cfg: DictConfig) -> None:
    """Parse the typed settings this stage reads (silkfire.stages.runner.check_config: before any stage runs)."""
    settings(cfg)
