"""`silkfire run experiment=silkie` on a tiny config: the Prefect flow runs the foundation and then the silkie
branch through DVC, each stage in its MLflow run under the pipeline's parent run, and registers silkfire-dpo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from silkfire.stages import BRANCHES, pipeline_stages

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
TINY_FLOW = [
    "experiment=smoke", "pipeline.branches=[silkie]", "train.num_threads=1",
    "silkie.sample.max_instructions=16", "silkie.sample.max_new_tokens=8", "silkie.sample.batch_size=16",
    "silkie.sample.progress=false", "silkie.sample.num_threads=1",
    "silkie.dpo.max_steps=4", "silkie.dpo.batch_size=4", "silkie.dpo.save_steps=2", "silkie.dpo.logging_steps=1",
    "silkie.dpo.num_threads=1", "silkie.dpo.progress=false", "silkie.dpo.eval_fraction=0.1",
    "silkie.evaluate.mme_max_items=24", "silkie.evaluate.mmhal_max_items=8", "silkie.evaluate.mmhal_max_new_tokens=8",
    "silkie.evaluate.num_threads=1",
]


def test_the_flow_runs_the_silkie_branch(prefect_server: None, project: Path) -> None:
    from mlflow import MlflowClient

    from silkfire.cli import load_flow_module

    flows = load_flow_module(project)
    rows = flows.pipeline(overrides=TINY_FLOW, push_to_remote=False)
    assert [row["stage"] for row in rows] == list(pipeline_stages(["silkie"]))
    assert all(row["status"] == "ran" for row in rows), rows
    lock = yaml.safe_load((project / "pipelines" / "silkie" / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(BRANCHES["silkie"])
    evaluation = json.loads((project / "metrics" / "evaluate_dpo.json").read_text())
    assert {"sft", "dpo", "gain"} <= set(evaluation)

    client = MlflowClient()
    experiment = client.get_experiment_by_name("silkfire")
    parent = client.search_runs([experiment.experiment_id], "tags.`silkfire.kind` = 'pipeline'")[0]
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    stages = {run.data.tags["silkfire.stage"] for run in children}
    assert set(BRANCHES["silkie"]) <= stages
    version = client.get_model_version_by_alias("silkfire-dpo", "candidate")
    dpo_run = next(run for run in children if run.data.tags["silkfire.stage"] == "dpo")
    assert version.run_id == dpo_run.info.run_id

    # nothing changed: a second run reproduces nothing
    again = flows.pipeline(overrides=TINY_FLOW, push_to_remote=False)
    assert all(row["status"] != "ran" for row in again), again
