"""Champion/challenger: a new model version takes the `champion` alias only when it wins on configured metrics.

The rule (conf/register/default.yaml):
- the challenger must beat the champion on the *primary* metric by at least `min_margin`;
- on every *guard* metric it may be worse than the champion by at most that guard's `tolerance`;
- with no champion yet, the first evaluated version becomes champion -- or, given a *baseline* (the figures of the
  model the challenger started from, measured in the same evaluation: DPO against its SFT start), it must beat
  that baseline under the same rule.

Each decided version carries its evaluation metrics as tags (`silkfire.metric.<name>`), so a later comparison reads
the champion's figures from the registry instead of re-evaluating it, and `silkfire models` can list them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from silkfire.selection import require_validation_metric

METRIC_TAG = "silkfire.metric."
DECISION_TAG = "silkfire.decision"
MODES = ("max", "min")


@dataclass(frozen=True)
class Objective:
    metric: str  # dotted key into the evaluation metrics, a validation one, e.g. "val.mme.sft.perception"
    mode: str = "max"  # max: higher is better; min: lower is better
    margin: float = 0.0  # primary: required gain; guard: allowed loss

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"register: mode of {self.metric!r} must be one of {MODES}, got {self.mode!r}")
        require_validation_metric("evaluate", self.metric, "register")  # keys into the evaluation metrics
        if self.margin < 0:
            raise ValueError(f"register: margin/tolerance of {self.metric!r} must be >= 0")

    def gain(self, challenger: float, champion: float) -> float:
        """How much better the challenger is (negative = worse), whatever the direction."""
        return challenger - champion if self.mode == "max" else champion - challenger


@dataclass(frozen=True)
class ChampionRule:
    primary: Objective
    guards: tuple[Objective, ...] = ()

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> ChampionRule:
        primary = cfg["primary"]
        guards = cfg.get("guards") or {}
        return cls(
            primary=Objective(primary["metric"], primary.get("mode", "max"), float(cfg.get("min_margin", 0.0))),
            guards=tuple(Objective(name, spec.get("mode", "max"), float(spec.get("tolerance", 0.0)))
                         for name, spec in guards.items()),
        )

    @property
    def objectives(self) -> tuple[Objective, ...]:
        return (self.primary, *self.guards)


@dataclass
class Decision:
    promote: bool
    reason: str
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per objective: the comparison table

    def markdown(self, challenger: str, champion: str | None) -> str:
        head = f"**{'PROMOTED' if self.promote else 'KEPT CHAMPION'}**: {self.reason}\n\n"
        lines = [f"| metric | role | mode | challenger ({challenger}) | champion ({champion or '-'}) | gain | needed |",
                 "|---|---|---|---|---|---|---|"]
        for row in self.rows:
            lines.append("| {metric} | {role} | {mode} | {challenger} | {champion} | {gain} | {needed} |".format(
                **{k: ("-" if v is None else v) for k, v in row.items()}))
        return head + "\n".join(lines) + "\n"


def lookup(metrics: Mapping[str, Any], dotted: str) -> float:
    """metrics["a"]["b"] for "a.b"; a clear error naming the key when it is missing or not a number."""
    value: Any = metrics
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(f"register: metric {dotted!r} not found in the evaluation metrics")
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"register: metric {dotted!r} is not a finite number: {value!r}")
    return float(value)


def decide(rule: ChampionRule, challenger: Mapping[str, float], champion: Mapping[str, float] | None,
           against: str = "") -> Decision:
    """Compare flat {metric: value} maps of the challenger and the current champion (None: no champion yet);
    ``against`` prefixes the reason (e.g. that the comparison is with a baseline, not a champion)."""
    rows: list[dict[str, Any]] = []
    for objective in rule.objectives:
        is_primary = objective is rule.primary
        mine = challenger[objective.metric]
        theirs = None if champion is None else champion.get(objective.metric)
        gain = None if theirs is None else round(objective.gain(mine, theirs), 4)
        rows.append({
            "metric": objective.metric, "role": "primary" if is_primary else "guard", "mode": objective.mode,
            "challenger": round(mine, 4), "champion": None if theirs is None else round(theirs, 4), "gain": gain,
            "needed": f">= {objective.margin:g}" if is_primary else f">= -{objective.margin:g}",
        })
    if champion is None:
        return Decision(True, "no champion yet: the first evaluated version becomes champion", rows)
    missing = [row["metric"] for row in rows if row["champion"] is None]
    if missing:
        return Decision(True, f"{against}the champion has no recorded {', '.join(missing)}: the measured challenger "
                              "wins", rows)
    primary = rows[0]
    if primary["gain"] < rule.primary.margin:
        return Decision(False, f"{against}{primary['metric']} gain {primary['gain']:g} is below the margin "
                               f"{rule.primary.margin:g}", rows)
    for row, guard in zip(rows[1:], rule.guards):
        if row["gain"] < -guard.margin:
            return Decision(False, f"{against}guard {row['metric']} drops by {-row['gain']:g} (> tolerance "
                                   f"{guard.margin:g})", rows)
    return Decision(True, f"{against}{primary['metric']} improves by {primary['gain']:g} (>= "
                          f"{rule.primary.margin:g}) and every guard holds", rows)


def version_metrics(tags: Mapping[str, str]) -> dict[str, float]:
    """The evaluation metrics recorded on a model version's tags."""
    return {key[len(METRIC_TAG):]: float(value) for key, value in tags.items() if key.startswith(METRIC_TAG)}


def champion_version(client: Any, name: str, alias: str) -> Any | None:
    """The ModelVersion behind `name@alias`, or None when there is none yet."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def run_gate(client: Any, name: str, version: int, alias: str, rule: ChampionRule,
             metrics: Mapping[str, Any], baseline: Mapping[str, float] | None = None) -> tuple[Decision, int | None]:
    """Record the challenger's metrics on its version, compare with `name@alias` (with none yet: with
    ``baseline`` when given, {metric: value} of the start model), move the alias if it wins.

    Returns the decision and the champion version it was compared with (None when there was none).
    """
    mine = {objective.metric: lookup(metrics, objective.metric) for objective in rule.objectives}
    for metric, value in mine.items():
        client.set_model_version_tag(name, str(version), METRIC_TAG + metric, str(value))
    current = champion_version(client, name, alias)
    if current is not None and int(current.version) == int(version):
        return Decision(False, f"version {version} already holds @{alias}"), int(version)
    theirs = None if current is None else version_metrics(current.tags or {})
    against = ""
    if theirs is None and baseline is not None:
        theirs, against = dict(baseline), "no champion yet, against the baseline (the start model): "
    decision = decide(rule, mine, theirs, against)
    client.set_model_version_tag(name, str(version), DECISION_TAG,
                                 ("promoted: " if decision.promote else "rejected: ") + decision.reason)
    # The whole decision (reason + comparison table) as the version's description: the registry page shows it
    # in full, where a tag is cut.
    client.update_model_version(name, str(version), description=decision.markdown(
        f"v{version}", None if current is None else f"v{current.version}"))
    if decision.promote:
        client.set_registered_model_alias(name, alias, str(version))
    return decision, None if current is None else int(current.version)


def gate_stage(rule: ChampionRule, name: str, alias: str, training_metrics: Any, evaluation_metrics: Any,
               out_dir: Any, *, log_model: bool, candidate_alias: str,
               baseline: Callable[[Mapping[str, Any]], Mapping[str, float]] | None = None) -> dict[str, Any]:
    """What a register stage does inside its MLflow run: registers the model its training stage logged
    (``logged_model`` of the ``training_metrics`` JSON; none: skipped, said as a tag) as a version of ``name`` with
    ``candidate_alias``, runs the gate (:func:`run_gate`) on the ``evaluation_metrics`` JSON (``baseline``: the start
    model's figures from it), writes the comparison table under ``out_dir`` (decision.md, comparison.json) and as the
    run's description, the decision as tags; returns the stage's metrics.

    Registration lives here, not in the training stage, so the registry's names and aliases are params of the
    register stages only: renaming a registered model re-registers, it never retrains (issue 15)."""
    import json
    from pathlib import Path

    import mlflow
    from mlflow import MlflowClient

    from silkfire.io import write_json
    from silkfire.tracking.registry import register_logged

    training = json.loads(Path(training_metrics).read_text(encoding="utf-8"))
    if not log_model or "logged_model" not in training:
        mlflow.set_tag("silkfire.decision", "skipped: no logged model (tracking.log_model is false)")
        return {"promoted": False, "skipped": True}
    version = register_logged(training["logged_model"], name, candidate_alias)
    evaluation = json.loads(Path(evaluation_metrics).read_text(encoding="utf-8"))
    start = None if baseline is None else baseline(evaluation)
    decision, champion = run_gate(MlflowClient(), name, version, alias, rule, evaluation, start)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    compared_with = "champion" if champion is not None else ("baseline" if start is not None else "none")
    table = decision.markdown(f"v{version}", f"v{champion}" if champion is not None
                              else ("start model" if start is not None else None))
    (out_dir / "decision.md").write_text(table, encoding="utf-8")
    write_json(out_dir / "comparison.json", decision.rows)
    mlflow.log_text(table, f"{out_dir.name}/decision.md")
    mlflow.set_tags({"silkfire.decision": "promoted" if decision.promote else "rejected",
                     "silkfire.decision_reason": decision.reason,
                     "silkfire.challenger": f"{name}/{version}",
                     "silkfire.champion_before": "none" if champion is None else f"{name}/{champion}",
                     "mlflow.note.content": table})  # the whole decision as the run's description
    return {"promoted": decision.promote, "challenger_version": version, "compared_with": compared_with,
            "champion_version_before": champion, "reason": decision.reason}


def gate_summary(metrics: Mapping[str, Any]) -> str:
    """One line for the run table of a register stage."""
    if metrics.get("skipped"):
        return "skipped (no registered model)"
    before = metrics.get("champion_version_before")
    if metrics.get("compared_with") == "baseline":  # no champion yet: it had to beat the model it started from
        verdict = "beat its start model: champion" if metrics.get("promoted") else "did not beat its start model"
        return f"v{metrics.get('challenger_version')} {verdict}"
    verdict = "promoted to champion" if metrics.get("promoted") else "champion kept"
    return f"v{metrics.get('challenger_version')} {verdict} (was {'none' if before is None else f'v{before}'})"
