"""The Silkfire pipeline as a Prefect flow.

Each stage is `dvc repro --single-item <stage>`: DVC runs the stage command (`silkfire stage <name>`, the one
implementation of the stage) only when its code, params or inputs changed, so a second run with nothing
changed does no work. The flow adds what DVC does not: one MLflow parent run per pipeline run with a nested run
per stage, retries, pushing data and models to the DVC remote, and a summary artefact.

Run it:       silkfire run [hydra overrides...]        (or: python flows/pipeline.py)
Schedule it:  silkfire serve --cron "0 2 * * *"
Rounds:       silkfire rounds run --rounds 3 [overrides]  (alignment_rounds: the Silkie branch from @champion)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from silkfire.config import project_root, write_params
from silkfire.reporting import (GATE_STAGES, StageRow, experiment_label, headline_metrics, markdown_table,
                                 parent_run_name, print_table)
from silkfire.stages import pipeline_stages
from silkfire.stages.runner import check_config, collect_row, reproduce_stage
from silkfire.tracking.runs import KIND_TAG, PARENT_RUN_ENV, description, machine_tags, run_tags, safe_params
from silkfire.versioning import has_default_remote, push
from silkfire.workspace import crash_dead_flow_runs, note_holder, workspace_lock


def flow_run_name() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.name or flow_run.id or "outside Prefect")


def flow_run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or "")


@task(name="dvc-stage", task_run_name="{stage}")
def run_stage(root: str, stage: str) -> bool:
    """Reproduce one stage through DVC; True when it ran, False when it was up to date."""
    return reproduce_stage(Path(root), stage)


# Pushing to a remote is the step that meets the network (or a busy disk): retry it.
@task(name="dvc-push", retries=3, retry_delay_seconds=[2, 10, 30])
def push_outputs(root: str) -> int:
    return push(Path(root))


def artifact_key(stage: str, suffix: str) -> str:
    """Prefect artefact keys allow only lowercase letters, digits and dashes (stage names have underscores)."""
    return f"silkfire-{stage.replace('_', '-')}-{suffix}"


def publish_failure(root: Path, cfg: Any, stage: str) -> None:
    """A failed stage may leave a report for people (the gate does): show it in Prefect and MLflow."""
    import mlflow

    from silkfire.tracking.gates import GATE_TAG
    from silkfire.tracking.store import NOTE_TAG

    report = root / cfg.paths.reports / stage / "report.md"
    text = report.read_text(encoding="utf-8") if report.is_file() else f"Stage `{stage}` failed; see the run logs."
    create_markdown_artifact(text, key=artifact_key(stage, "failure"), description=f"Why stage {stage} failed")
    table = root / cfg.paths.reports / stage / "failures.json"
    if table.is_file() and (rows := json.loads(table.read_text(encoding="utf-8"))):
        create_table_artifact(rows, key=artifact_key(stage, "failures"), description=f"Failing checks of {stage}")
    mlflow.set_tags({"silkfire.failed_stage": stage, NOTE_TAG: f"# Stage `{stage}` failed\n\n{text}"}
                    | ({GATE_TAG: "failed"} if stage in GATE_STAGES else {}))
    mlflow.log_text(text, f"failure/{stage}.md")


def publish_decision(root: Path, cfg: Any) -> None:
    """The champion/challenger verdict, as Prefect artefacts (MLflow has it from the stage itself)."""
    folder = root / cfg.paths.reports / "register"
    if (folder / "decision.md").is_file():
        create_markdown_artifact((folder / "decision.md").read_text(encoding="utf-8"), key="silkfire-champion",
                                 description="Champion/challenger decision")
    if (folder / "comparison.json").is_file() and (rows := json.loads((folder / "comparison.json").read_text())):
        create_table_artifact(rows, key="silkfire-champion-comparison", description="Challenger vs champion")


def publish_fire_bench(root: Path, cfg: Any) -> None:
    """The FIRE-Bench comparison table (written by the fire_bench stage) as a Prefect artefact."""
    table = root / cfg.paths.reports / "fire_bench" / "fire_bench.md"
    if table.is_file():
        create_markdown_artifact(table.read_text(encoding="utf-8"), key="silkfire-fire-bench",
                                 description="FIRE-Bench: SFT baseline vs FIRE-trained student and teacher")


@flow(name="silkfire-pipeline", log_prints=True)
def pipeline(overrides: list[str] | None = None, push_to_remote: bool = True,
             wait_for_workspace: float = 0.0) -> list[dict[str, Any]]:
    """Compose the config (Hydra overrides), run the foundation (generate -> validate -> base -> sft -> evaluate)
    and the branches in `pipeline.branches`, track it all."""
    import mlflow

    from silkfire.tracking.gates import GATE_TAG
    from silkfire.tracking.store import NOTE_TAG, configure, run_url

    logger = get_run_logger()
    root = project_root()
    # Never two runs in one workspace: refuse (or wait) before touching params or outputs.
    with workspace_lock(root, what=f"flow run {flow_run_name()}", wait_seconds=wait_for_workspace):
        note_holder(root, prefect_flow_run=flow_run_id())
        if crashed := crash_dead_flow_runs(root):
            logger.warning("%d flow run(s) of a dead earlier run marked Crashed", crashed)
        # Every stage's settings parsed before the first stage runs (and before params.yaml is touched).
        cfg, params_changed = write_params(overrides or [], root, check=lambda composed: check_config(
            composed, pipeline_stages(list(composed.pipeline.branches))))
        logger.info("params.yaml %s", "updated" if params_changed else "unchanged")
        experiment_id = configure(root, cfg.tracking.experiment_name)
        rows: list[StageRow] = []
        started = time.perf_counter()
        name = parent_run_name(overrides, cfg.seed, flow_run_name())
        tags = run_tags(root) | machine_tags(cfg) | {
            KIND_TAG: "pipeline", "silkfire.experiment": experiment_label(overrides),
            "silkfire.flow_run": flow_run_name(), "silkfire.flow_run_id": flow_run_id()}
        with mlflow.start_run(run_name=name, tags=tags) as parent:
            logger.info("MLflow run %r: %s", name, run_url(experiment_id, parent.info.run_id))
            mlflow.log_params(safe_params(cfg))
            mlflow.set_tag("silkfire.overrides", " ".join(overrides or []) or "(none)")
            os.environ[PARENT_RUN_ENV] = parent.info.run_id
            try:
                for stage in pipeline_stages(list(cfg.pipeline.branches)):
                    try:
                        ran = run_stage(str(root), stage)
                    except Exception:
                        publish_failure(root, cfg, stage)
                        logger.error("stage %s failed; its report is on the MLflow run %s", stage,
                                     run_url(experiment_id, parent.info.run_id))
                        raise
                    rows.append(row := collect_row(root, cfg, stage, ran=ran, parent_run_id=parent.info.run_id))
                    logger.info("%s %s: %s | MLflow %s", stage, row.status, row.summary or "-",
                                run_url(experiment_id, row.run_id) if row.run_id else "-")
                    if stage == "register" and ran:
                        publish_decision(root, cfg)
                    if stage == "fire_bench" and ran:
                        publish_fire_bench(root, cfg)
            finally:
                os.environ.pop(PARENT_RUN_ENV, None)
            if push_to_remote and has_default_remote(root):
                pushed = push_outputs(str(root))
                mlflow.log_metric("dvc_files_pushed", pushed)
            for row in rows:
                if row.digest:
                    mlflow.set_tag(f"silkfire.dvc.{row.stage}", row.digest)
            if (root / "dvc.lock").is_file():
                mlflow.log_artifact(str(root / "dvc.lock"), artifact_path="lineage")
            mlflow.log_artifact(str(root / "params.yaml"), artifact_path="lineage")
            headline = headline_metrics(root, cfg, [row.stage for row in rows])
            mlflow.log_metrics(headline)
            if "gates.passed" in headline:
                mlflow.set_tag(GATE_TAG, "passed")
            wall = time.perf_counter() - started
            mlflow.log_metric("pipeline_wall_seconds", wall)
            table = markdown_table(rows, parent.info.run_id, wall, headline=headline, experiment_id=experiment_id,
                                   title=name)
            decision = root / cfg.paths.reports / "register" / "decision.md"
            if any(row.stage == "register" for row in rows) and decision.is_file():
                table += "\n## Champion decision\n\n" + decision.read_text(encoding="utf-8")
            mlflow.log_text(table, "summary.md")
            mlflow.set_tag(NOTE_TAG, description(table))  # the run's description in the MLflow UI
            logger.info("headline metrics: %s", ", ".join(f"{k}={v:.4g}" for k, v in headline.items()) or "-")
    create_markdown_artifact(table, key="silkfire-summary", description="Silkfire pipeline run summary")
    print_table(rows, parent.info.run_id, wall)
    return [row.as_dict() for row in rows]


@flow(name="silkfire-rounds", log_prints=True)
def alignment_rounds(rounds: int | None = None, more: int | None = None, overrides: list[str] | None = None,
                     name: str = "rounds", push_to_remote: bool = True) -> dict[str, Any]:
    """Alignment rounds (silkfire.rounds): each round runs this module's pipeline flow as a subflow on the Silkie
    branch, from the current @champion of silkfire-dpo, and promotes only a validated winner. ``rounds``: the series'
    length; ``more``: rounds to add past its finished ones (a nightly deployment: 1)."""
    from silkfire.rounds import run_rounds, show

    manifest = run_rounds(overrides or [], total=rounds, more=more, name=name,
                          flow_runner=lambda round_overrides: pipeline(overrides=round_overrides,
                                                                       push_to_remote=push_to_remote))
    create_markdown_artifact(show(name), key="silkfire-rounds", description="Alignment rounds: the curve")
    return manifest


def scheduled_deployment(cron: str, overrides: list[str] | None = None, name: str = "silkfire-nightly"):
    """A cron-scheduled deployment of the pipeline; at most one of its runs at a time (concurrency limit 1)."""
    return pipeline.to_deployment(
        name=name,
        cron=cron,
        parameters={"overrides": list(overrides or [])},
        concurrency_limit=1,
        tags=["silkfire"],
        description="Silkfire pipeline on a schedule; Hydra overrides are the `overrides` parameter",
    )


if __name__ == "__main__":
    import sys

    pipeline(overrides=sys.argv[1:])
