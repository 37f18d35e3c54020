"""Stage `register_dpo`: registers the DPO model the dpo stage logged (as a version of silkfire-dpo, alias candidate),
then the champion/challenger gate on it.

The same gate as `register` (silkfire.tracking.champion), on `silkie.register`'s validation metrics of
metrics/evaluate_dpo.json (the DPO model on the val scenes' MMHal-style and MME-style sets). With no champion yet
and ``baseline: sft``, the first DPO version must beat the SFT model it started from, measured in the same
evaluation (each ``val.dpo.<x>`` against ``val.sft.<x>``): a DPO run that made the model worse is never served.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from silkfire.stages import Dep, Out

PARAMS = ("silkie.register", "tracking.log_model", "tracking.candidate_alias", "paths.metrics", "paths.reports")
DEPS = (
    Dep("${paths.metrics}/dpo.json", "the model the dpo stage logged (registered here)"),
    Dep("${paths.metrics}/evaluate_dpo.json", "its evaluation, and its SFT start's"),
)
OUTS = (
    Out("${paths.reports}/register_dpo", cache=False),
)
BASELINES = ("sft", None)


def baseline_metrics(evaluation: dict[str, Any], metrics: list[str], start: str) -> dict[str, float]:
    """The start model's figures for the rule's metrics: ``val.dpo.x`` read as ``val.<start>.x``."""
    from silkfire.tracking.champion import lookup

    return {metric: lookup(evaluation, metric.replace(".dpo.", f".{start}.", 1)) for metric in metrics}


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    from silkfire.tracking.champion import gate_stage

    metrics_dir = root / cfg.paths.metrics
    rule = settings(cfg)
    start = cfg.silkie.register.get("baseline")
    metrics = [objective.metric for objective in rule.objectives]
    return gate_stage(rule, str(cfg.silkie.register.model), str(cfg.silkie.register.alias), metrics_dir / "dpo.json",
                      metrics_dir / "evaluate_dpo.json", root / cfg.paths.reports / "register_dpo",
                      log_model=bool(cfg.tracking.log_model), candidate_alias=str(cfg.tracking.candidate_alias),
                      baseline=None if start is None else lambda evaluation: baseline_metrics(evaluation, metrics,
                                                                                              str(start)))


def summary(metrics: dict[str, Any]) -> str:
    from silkfire.tracking.champion import gate_summary

    return gate_summary(metrics)


def settings(cfg: DictConfig) -> Any:
    """The champion rule (``silkie.register``), parsed; it refuses a test-set metric (silkfire.selection)."""
    from silkfire.tracking.champion import ChampionRule

    if cfg.silkie.register.get("baseline") not in BASELINES:
        raise ValueError(f"silkie.register.baseline must be one of {list(BASELINES)}, got "
                         f"{cfg.silkie.register.get('baseline')!r}")
    rule = ChampionRule.from_mapping(OmegaConf.to_container(cfg.silkie.register, resolve=True))
    if any(".dpo." not in objective.metric for objective in rule.objectives):
        raise ValueError("silkie.register: every metric must be a DPO figure of evaluate_dpo (val.dpo.<x>)")
    if not cfg.silkie.evaluate.get("val", True):
        raise ValueError("silkie.register decides on validation figures: silkie.evaluate.val must stay true")
    return rule


def check(cfg: DictConfig) -> None:
    """Parse the typed settings this stage reads (silkfire.stages.runner.check_config: before any stage runs)."""
    settings(cfg)
