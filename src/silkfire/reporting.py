"""The end-of-run summary: one row per stage (status, key metrics, MLflow run, DVC digest), the headline metrics
copied onto the pipeline's parent run, and the parent run's name. A library module: the row of one stage, which
needs the stage's own `summary`, is made by :func:`silkfire.stages.runner.collect_row`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from silkfire.tracking.runs import STAGE_TAG

# The figures a reader looks for first, copied from metrics/<stage>.json onto the parent run under the name
# `<stage>.<key>` (the FILE.KEY name `silkfire sweep --metric` and `dvc metrics show` use), when the stage is part
# of the pipeline run. Gate verdicts come from the run itself (a failing gate stops it): `gates.passed`.
HEADLINE: dict[str, tuple[str, ...]] = {
    "sft": ("train_loss", "eval_loss"),
    "evaluate": ("mme.sft.perception", "mme.sft.cognition", "mme.blind.perception", "mme.blind.cognition",
                 "val.mme.sft.perception"),
    "evaluate_dpo": ("dpo.mme_perception", "dpo.mme_cognition", "dpo.mmhal_score", "dpo.hallucination_rate",
                     "sft.mmhal_score", "sft.hallucination_rate"),
    "fire_bench": ("free.oracle.fire.AT", "free.oracle.fire.RR", "free.oracle.sft.AT", "free.oracle.sft.RR"),
    "register": ("promoted",),
}
GATE_STAGES = ("validate", "validate_feedback", "validate_dialogues")

# `dvc metrics show` (and `dvc exp show`): one row per evaluated model, columns shared across rows, so the table
# fits a 160-column terminal. Only these small files are DVC *metrics*; every stage's full figures stay in
# metrics/<stage>.json (a plain DVC output: `dvc metrics show metrics/evaluate.json`, `silkfire sweep --metric`).
# Test figures: the table reports a run; choices read the val keys of the full files (silkfire.selection).
METRICS_TABLE: dict[str, dict[str, str]] = {
    "evaluate": {"perception": "mme.sft.perception", "cognition": "mme.sft.cognition"},  # the SFT model
    "evaluate_dpo": {"perception": "dpo.mme_perception", "cognition": "dpo.mme_cognition",
                     "mmhal": "dpo.mmhal_score", "halluc_rate": "dpo.hallucination_rate"},  # the DPO model
    "fire_bench": {"AT": "free.oracle.fire.AT", "ADR": "free.oracle.fire.ADR", "ATR": "free.oracle.fire.ATR",
                   "RR": "free.oracle.fire.RR"},  # the FIRE student in free dialogue with the oracle teacher
}
METRICS_TABLE_DIR = "summary"  # under paths.metrics


def metrics_table_row(stage: str, metrics: dict[str, Any]) -> dict[str, float] | None:
    """The stage's row of :data:`METRICS_TABLE` (3 decimals; a figure the run did not produce is left out), or
    None for a stage without a row."""
    if stage not in METRICS_TABLE:
        return None
    return {column: round(value, 3) for column, key in METRICS_TABLE[stage].items()
            if (value := _lookup(metrics, key)) is not None}


@dataclass(frozen=True)
class StageRow:
    stage: str
    status: str  # "ran" | "cached"
    summary: str
    run_id: str  # the MLflow run that produced the stage's current outputs
    digest: str  # DVC md5 of the stage's first output
    seconds: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _lookup(metrics: dict[str, Any], dotted: str) -> float | None:
    value: Any = metrics
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, (int, float)) else None


def headline_metrics(root: Path, cfg: DictConfig, stages: list[str]) -> dict[str, float]:
    """The HEADLINE figures of the stages this pipeline run went through (ran or cached), as `<stage>.<key>`."""
    found: dict[str, float] = {}
    for stage in stages:
        metrics = stage_metrics(root, cfg, stage) if stage in HEADLINE else {}
        for key in HEADLINE.get(stage, ()):
            if (value := _lookup(metrics, key)) is not None:
                found[f"{stage}.{key}"] = value
    gates = [stage for stage in stages if stage in GATE_STAGES]
    if gates:
        found["gates.passed"] = 1.0  # every gate of the run let its data through (a failing one stops the run)
        found["gates.rows_quarantined"] = sum(
            _lookup(stage_metrics(root, cfg, stage), "rows_quarantined") or 0.0 for stage in gates)
    return found


def experiment_label(overrides: list[str] | None) -> str:
    """The Hydra experiment a run composed (`experiment=silkie`), else `default`."""
    for override in overrides or []:
        key, _, value = override.lstrip("+~").partition("=")
        if key == "experiment" and value and value != "null":
            return value
    return "default"


def parent_run_name(overrides: list[str] | None, seed: Any, flow_run: str) -> str:
    """`pipeline · silkie · seed 0 · merciful-foxhound`: what chart legends and the runs table show."""
    return f"pipeline · {experiment_label(overrides)} · seed {seed} · {flow_run}"


def stage_metrics(root: Path, cfg: DictConfig, stage: str) -> dict[str, Any]:
    path = root / cfg.paths.metrics / f"{stage}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def latest_stage_run(stage: str, parent_run_id: str | None) -> str:
    """Id of the newest finished run of `stage` (under `parent_run_id` when given), or '' if none."""
    import mlflow

    query = f"tags.`{STAGE_TAG}` = '{stage}' and attributes.status = 'FINISHED'"
    if parent_run_id:
        query += f" and tags.`mlflow.parentRunId` = '{parent_run_id}'"
    runs = mlflow.search_runs(filter_string=query, order_by=["attributes.start_time DESC"],
                              max_results=1, output_format="list")
    if not runs:
        return ""
    # The newest may be an earlier pipeline run's `<stage> (cached)` record: the producer is the run it points at
    # (followed to the end: records written before this rule could point at another cached record).
    run = runs[0]
    for _ in range(100):
        if not (produced_by := run.data.tags.get("silkfire.produced_by")):
            break
        run = mlflow.get_run(produced_by)
    return run.info.run_id


def markdown_table(rows: list[StageRow], parent_run_id: str, wall_seconds: float, *,
                   headline: dict[str, float] | None = None, experiment_id: str | None = None,
                   title: str | None = None) -> str:
    """The run summary in markdown (the parent run's description, the Prefect artefact): the headline metrics and
    one row per stage, run ids linked to the MLflow UI when the experiment is known."""
    from silkfire.tracking.store import run_url

    def link(run_id: str) -> str:
        if not run_id:
            return "-"
        return f"[`{run_id[:8]}…`]({run_url(experiment_id, run_id)})" if experiment_id else f"`{run_id}`"

    lines = [f"**{title or 'Silkfire pipeline run'}**", "",
             f"Parent run {link(parent_run_id)}, wall time {wall_seconds:.1f} s", ""]
    if headline:
        lines += ["| headline metric | value |", "|---|---:|"]
        lines += [f"| {name} | {value:.4g} |" for name, value in headline.items()]
        lines.append("")
    lines += ["| stage | status | key metrics | MLflow run | DVC digest |", "|---|---|---|---|---|"]
    lines += [f"| {r.stage} | {r.status} | {r.summary} | {link(r.run_id)} | `{r.digest}` |" for r in rows]
    return "\n".join(lines) + "\n"


def print_table(rows: list[StageRow], parent_run_id: str, wall_seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Silkfire pipeline — MLflow parent run {parent_run_id} — {wall_seconds:.1f} s")
    for column in ("stage", "status", "key metrics", "MLflow run", "DVC digest"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r.stage, r.status, r.summary, r.run_id, r.digest)
    console = Console()
    if not console.is_terminal:  # piped or logged: do not fold run ids and digests into 80 columns
        console = Console(width=180)
    console.print(table)
