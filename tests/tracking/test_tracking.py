"""MLflow tracking against a real SQLite store in tmp_path: nesting, redaction, registry aliases, lineage."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from silkfire.tracking.lineage import output_digest, stage_digests
from silkfire.tracking.registry import hf_model_dir, log_and_register
from silkfire.tracking.runs import PARENT_RUN_ENV, STAGE_TAG, safe_params, stage_run
from silkfire.tracking.store import configure


def test_store_is_sqlite_under_mlruns_with_artifacts_beside_it(mlflow_root: Path) -> None:
    experiment_id = configure(mlflow_root, "exp")
    assert mlflow.get_tracking_uri() == f"sqlite:///{mlflow_root / 'mlruns' / 'mlflow.db'}"
    assert (mlflow_root / "mlruns" / "mlflow.db").is_file()
    location = mlflow.get_experiment(experiment_id).artifact_location
    assert location == (mlflow_root / "mlruns" / "artifacts").as_uri()


def test_stage_run_nests_under_the_parent_from_the_environment(mlflow_root: Path, monkeypatch) -> None:
    configure(mlflow_root, "exp")
    with mlflow.start_run(run_name="pipeline") as parent:
        parent_id = parent.info.run_id
    monkeypatch.setenv(PARENT_RUN_ENV, parent_id)
    with stage_run(mlflow_root, "generate", {"seed": "0"}, "exp") as run:
        child_id = run.info.run_id
    child = MlflowClient().get_run(child_id)
    assert child.data.tags["mlflow.parentRunId"] == parent_id
    assert child.data.tags[STAGE_TAG] == "generate"
    assert child.data.params == {"seed": "0"}


def test_stage_run_without_parent_is_top_level(mlflow_root: Path) -> None:
    with stage_run(mlflow_root, "generate", {}, "exp") as run:
        run_id = run.info.run_id
    assert "mlflow.parentRunId" not in MlflowClient().get_run(run_id).data.tags


def test_credentials_never_become_params() -> None:
    params = safe_params({"judge": {"api_key": "sk-secret", "model": "gpt"}, "token": "t", "lr": 0.1})
    assert params == {"judge.api_key": "***", "judge.model": "gpt", "token": "***", "lr": "0.1"}


def test_log_and_register_moves_the_alias_to_the_new_version(mlflow_root: Path) -> None:
    configure(mlflow_root, "exp")
    model_dir = mlflow_root / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    versions = []
    for _ in range(2):
        with mlflow.start_run():
            versions.append(log_and_register(model_dir, "m", "candidate"))
    assert versions == [1, 2]
    client = MlflowClient()
    assert int(client.get_model_version_by_alias("m", "candidate").version) == 2
    source = client.get_model_version("m", "2").source
    assert source.startswith("models:/m-")  # an MLflow (pyfunc) model; tests/tracking/test_serving.py serves one
    local = mlflow.artifacts.download_artifacts(f"models:/m@candidate", dst_path=str(mlflow_root / "dl"))
    assert (hf_model_dir(local) / "config.json").is_file()


def test_lineage_reads_digests_from_dvc_lock(tmp_path: Path) -> None:
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  generate:\n    cmd: x\n    outs:\n    - path: data/world\n"
        "      hash: md5\n      md5: abc.dir\n"
    )
    assert output_digest(tmp_path, "data/world/") == "abc.dir"
    assert output_digest(tmp_path, "data/other") is None
    assert stage_digests(tmp_path, "generate") == {"data/world": "abc.dir"}
    assert stage_digests(tmp_path, "missing") == {}
