"""The end-of-run summary: one row per stage (status, key metrics, MLflow run, DVC digest)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from silkfire.tracking.lineage import stage_digests
from silkfire.tracking.runs import STAGE_TAG, run_tags


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


def _read_metrics(root: Path, cfg: DictConfig, stage: str) -> dict[str, Any]:
    path = root / cfg.paths.metrics / f"{stage}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _latest_stage_run(stage: str, parent_run_id: str | None) -> str:
    """Id of the newest finished run of `stage` (under `parent_run_id` when given), or '' if none."""
    import mlflow

    query = f"tags.`{STAGE_TAG}` = '{stage}' and attributes.status = 'FINISHED'"
    if parent_run_id:
        query += f" and tags.`mlflow.parentRunId` = '{parent_run_id}'"
    runs = mlflow.search_runs(filter_string=query, order_by=["attributes.start_time DESC"],
                              max_results=1, output_format="list")
    return runs[0].info.run_id if runs else ""


def collect_row(root: Path, cfg: DictConfig, stage: str, *, ran: bool, parent_run_id: str) -> StageRow:
    """Summarise a finished stage. A stage DVC skipped still gets a nested run in this pipeline run, tagged
    cached and pointing at the run that produced its outputs, so every pipeline run shows every stage."""
    import mlflow

    from silkfire.stages.runner import stage_module

    metrics = _read_metrics(root, cfg, stage)
    summary = stage_module(stage).summary(metrics) if metrics else "(no metrics)"
    digests = stage_digests(root, stage)
    # The stage's data/model directory identifies its version better than its small metrics files.
    digest = next((d for d in digests.values() if d.endswith(".dir")), next(iter(digests.values()), ""))
    if ran:
        run_id = _latest_stage_run(stage, parent_run_id)
    else:
        run_id = _latest_stage_run(stage, None)
        tags = run_tags(root, stage) | {"silkfire.cached": "true", "silkfire.produced_by": run_id}
        with mlflow.start_run(run_name=f"{stage} (cached)", nested=True, tags=tags):
            mlflow.log_dict(metrics, f"metrics/{stage}.json")
    seconds = metrics.get("wall_seconds") if ran else None
    return StageRow(stage, "ran" if ran else "cached", summary, run_id, digest, seconds)


def markdown_table(rows: list[StageRow], parent_run_id: str, wall_seconds: float) -> str:
    lines = [
        f"# Silkfire pipeline run `{parent_run_id}`",
        "",
        f"Wall time: {wall_seconds:.1f} s",
        "",
        "| stage | status | key metrics | MLflow run | DVC digest |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r.stage} | {r.status} | {r.summary} | `{r.run_id}` | `{r.digest}` |" for r in rows]
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
