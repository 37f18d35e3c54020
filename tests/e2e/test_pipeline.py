"""The whole pipeline on a tiny world: Prefect flow over the DVC stages, tracked in MLflow, gated by GX."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo

from silkfire.stages import STAGES

pytestmark = pytest.mark.e2e
SMOKE = ["experiment=smoke"]


def _flow_module(root: Path):
    from silkfire.cli import load_flow_module

    return load_flow_module(root)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _check_through_mlflow_server(project: Path, sft_run_id: str, version: str) -> None:
    """What a user sees in the MLflow UI: start `mlflow server` on the project's store, ask its REST API."""
    import httpx

    port = _free_port()
    store = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", store,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(1)
        api = f"{base}/api/2.0/mlflow"
        experiment = httpx.get(f"{api}/experiments/get-by-name", params={"experiment_name": "silkfire"}).json()
        experiment_id = experiment["experiment"]["experiment_id"]
        runs = httpx.post(f"{api}/runs/search", json={"experiment_ids": [experiment_id]}).json()["runs"]
        stages = {tag["value"] for run in runs for tag in run["data"].get("tags", [])
                  if tag["key"] == "silkfire.stage"}
        assert set(STAGES) <= stages
        history = httpx.get(f"{api}/metrics/get-history",
                            params={"run_id": sft_run_id, "metric_key": "train/loss"}).json()["metrics"]
        assert len(history) >= 2
        model = httpx.get(f"{api}/registered-models/get", params={"name": "silkfire-sft"}).json()
        aliases = {a["alias"]: a["version"] for a in model["registered_model"].get("aliases", [])}
        assert aliases == {"candidate": str(version), "champion": str(version)}
    finally:
        server.terminate()
        server.wait(timeout=30)


def _stage_runs(client, experiment_id: str, parent_id: str) -> dict[str, object]:
    runs = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {run.data.tags["silkfire.stage"]: run for run in runs}


def test_pipeline_end_to_end(prefect_server: None, project: Path) -> None:
    import mlflow
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client

    flows = _flow_module(project)

    # 1. First run: every stage runs.
    rows = flows.pipeline(overrides=SMOKE)
    assert [row["stage"] for row in rows] == list(STAGES)
    assert all(row["status"] == "ran" for row in rows), rows

    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    world_md5 = next(o["md5"] for o in lock["stages"]["generate"]["outs"] if o["path"] == "data/world")
    assert world_md5.endswith(".dir")
    with Repo(str(project)) as repo:
        assert repo.status(targets=["dvc.yaml"]) == {}, "dvc status after a finished run must be clean"
    assert any((project / ".dvcstore").rglob("*")), "outputs were not pushed to the local DVC remote"

    # the SFT curves as a PNG DVC plot (renders offline in `dvc plots show`)
    assert (project / "metrics" / "curves" / "sft.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Repo(str(project)) as repo:
        shown = repo.plots.show()["workspace"]["sources"]["data"]  # what `dvc plots show` renders
        assert shown["metrics/curves/sft.png"]["data"][:4] == b"\x89PNG"
    # What a user types after the default run (the branches have not run): no warnings, a table that fits.
    dvc = [str(Path(sys.executable).with_name("dvc"))]
    plots = subprocess.run([*dvc, "plots", "show", "-o", str(project / "dvc_plots")], cwd=project,
                           capture_output=True, text=True, check=True)
    assert plots.stderr.strip() == "", plots.stderr  # was "DVC failed to load some plots" (dpo/fire files)
    assert "metrics/curves/sft.png" in (project / "dvc_plots" / "index.html").read_text()
    table = subprocess.run([*dvc, "metrics", "show"], cwd=project, capture_output=True, text=True,
                           check=True).stdout
    assert "metrics/summary/evaluate.json" in table and "perception" in table
    assert max(map(len, table.splitlines())) <= 160, table  # was ~10,000 columns

    evaluation = json.loads((project / "metrics" / "evaluate.json").read_text())
    for model in ("sft", "base"):
        result = evaluation["mme"][model]
        assert set(result) == {"perception", "cognition", "subtasks"}
        assert {"existence", "count", "position", "color"} <= set(result["subtasks"])

    client = MlflowClient()
    experiment = client.get_experiment_by_name("silkfire")
    parents = client.search_runs([experiment.experiment_id], "tags.`silkfire.kind` = 'pipeline'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.params["world.train_scenes"] == str(
        yaml.safe_load((project / "params.yaml").read_text())["world"]["train_scenes"])
    assert "mlflow.source.git.commit" in parent.data.tags
    assert parent.data.tags["silkfire.dvc.generate"] == world_md5
    stage_runs = _stage_runs(client, experiment.experiment_id, parent.info.run_id)
    assert set(stage_runs) == set(STAGES)
    sft_run = stage_runs["sft"]
    losses = client.get_metric_history(sft_run.info.run_id, "train/loss")
    assert len(losses) >= 2, "training curve was not streamed to MLflow"
    inputs = {d.dataset.name: (d.dataset.digest, {t.key: t.value for t in d.tags}["dvc.md5"])
              for d in sft_run.inputs.dataset_inputs}
    assert set(inputs) == {"world-train", "world-val"}
    assert inputs["world-train"][0] != inputs["world-val"][0]  # each file's own digest
    assert {dvc for _, dvc in inputs.values()} == {world_md5}  # inside the DVC output that dvc.lock names
    artifacts = {a.path for a in client.list_artifacts(sft_run.info.run_id)}
    assert "curves" in artifacts
    assert sft_run.outputs.model_outputs, "the model is not logged as the run's MLflow model"
    # The parent run reads at a glance: named, described, with the headline metrics.
    assert parent.info.run_name.startswith("pipeline · smoke · seed ")
    assert parent.data.metrics["evaluate.mme.sft.perception"] == evaluation["mme"]["sft"]["perception"]
    assert parent.data.metrics["gates.passed"] == 1.0 and parent.data.tags["silkfire.gate"] == "passed"
    assert "| evaluate |" in parent.data.tags["mlflow.note.content"]
    version = client.get_model_version_by_alias("silkfire-sft", "candidate")
    assert version.run_id == sft_run.info.run_id
    # The first evaluated version becomes champion, with its metrics and the decision on the version.
    champion = client.get_model_version_by_alias("silkfire-sft", "champion")
    assert champion.version == version.version
    val = evaluation["val"]["mme"]["sft"]["perception"]  # the gate decides on the val scenes' set
    assert float(champion.tags["silkfire.metric.val.mme.sft.perception"]) == val
    assert champion.tags["silkfire.decision"].startswith("promoted")
    assert stage_runs["register"].data.tags["silkfire.decision"] == "promoted"
    # Lineage: from the registered version back to commit, data digests, gate verdict and resolved config.
    from silkfire.tracking.inventory import lineage, list_models, resolved_config

    facts = lineage(client, "silkfire-sft@champion")
    assert facts["git_commit"] == parent.data.tags["mlflow.source.git.commit"]
    assert {d["dvc_out_digest"] for d in facts["training_data"]} == {world_md5}
    assert facts["dvc_digests"]["generate"] == world_md5
    assert [(g["stage"], g["verdict"]) for g in facts["quality_gates"]] == [("validate", "passed")]
    assert yaml.safe_load(resolved_config(facts)) == yaml.safe_load((project / "params.yaml").read_text())
    listed = {(row["name"], row["version"]): row for row in list_models(client)}
    assert listed[("silkfire-sft", int(version.version))]["aliases"] == ["candidate", "champion"]
    _check_through_mlflow_server(project, sft_run.info.run_id, version.version)
    docs = client.list_artifacts(stage_runs["validate"].info.run_id, "validation")
    assert docs, "the gate's report and Data Docs were not logged"

    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts()
    summaries = [a for a in artifacts if a.key == "silkfire-summary"]
    assert summaries and parent.info.run_id in summaries[0].data

    # 2. Nothing changed: nothing runs, the lock stays as it was, and it takes seconds.
    lock_before = (project / "dvc.lock").read_text()
    started = time.perf_counter()
    rows = flows.pipeline(overrides=SMOKE)
    elapsed = time.perf_counter() - started
    assert all(row["status"] == "cached" for row in rows), rows
    assert (project / "dvc.lock").read_text() == lock_before
    assert elapsed < 60, f"a no-change re-run took {elapsed:.1f} s"
    latest_parent = client.search_runs(
        [experiment.experiment_id], "tags.`silkfire.kind` = 'pipeline'", order_by=["attributes.start_time DESC"]
    )[0]
    cached = _stage_runs(client, experiment.experiment_id, latest_parent.info.run_id)
    assert set(cached) == set(STAGES)
    assert cached["sft"].data.tags["silkfire.produced_by"] == sft_run.info.run_id

    # 3. One evaluation param changed: only the stage that reads it runs again.
    rows = flows.pipeline(overrides=[*SMOKE, "eval.max_new_tokens=6"])
    status = {row["stage"]: row["status"] for row in rows}
    assert status == {"generate": "cached", "validate": "cached", "base": "cached", "sft": "cached",
                      "evaluate": "ran", "register": "ran"}  # a new evaluation is a new champion decision
    # The same model re-evaluated competes with itself: it already holds @champion, nothing moves.
    assert client.get_model_version_by_alias("silkfire-sft", "champion").version == version.version
    assert json.loads((project / "metrics" / "register.json").read_text())["promoted"] is False
    mlflow.end_run()

    # 3b. Exact invalidation (issue 15): a change to the gate's code re-runs the gate, whose verdict stays the same,
    # so SFT does not re-train (it depends on the verdict, not on the gate's report folder with its timings). The
    # stages whose import closure holds the file run again (evaluate: eval.mme -> data.published -> quality).
    from silkfire.stages.code_deps import code_deps

    report_code = project / "src" / "silkfire" / "quality" / "report.py"
    report_code.write_text(report_code.read_text() + "\n# a comment\n")
    rows = flows.pipeline(overrides=[*SMOKE, "eval.max_new_tokens=6"])
    status = {row["stage"]: row["status"] for row in rows}
    assert "src/silkfire/quality/report.py" not in code_deps("sft", project)
    assert status["validate"] == "ran" and status["sft"] == "cached", status
    assert all(status[stage] == "cached" for stage in ("generate", "base")), status
    assert all(status[stage] == "ran" for stage in STAGES
               if "src/silkfire/quality/report.py" in code_deps(stage, project)), status
    mlflow.end_run()
    # ... and renaming the MLflow experiment leaves every stage up to date (no stage reads the name)
    from silkfire.config import write_params

    write_params([*SMOKE, "eval.max_new_tokens=6", "tracking.experiment_name=other"], project)
    with Repo(str(project)) as repo:
        assert repo.status(targets=["dvc.yaml"]) == {}
    # ... and renaming the registered model re-runs registration only (the register stage registers; sft logs)
    write_params([*SMOKE, "eval.max_new_tokens=6", "tracking.registered_model=silkfire-sft-renamed"], project)
    with Repo(str(project)) as repo:
        assert set(repo.status(targets=["dvc.yaml"])) == {"register"}
    write_params([*SMOKE, "eval.max_new_tokens=6"], project)

    # 4. The pushed remote alone brings the data back: drop the workspace copy and the cache, pull.
    shutil.rmtree(project / "data")
    shutil.rmtree(project / ".dvc" / "cache")
    with Repo(str(project)) as repo:
        repo.pull(targets=["dvc.yaml"])  # the foundation; branch outputs exist only once a branch ran
    assert (project / "data" / "world" / "mme.jsonl").is_file()
    with Repo(str(project)) as repo:
        assert repo.status(targets=["dvc.yaml"]) == {}

    # 5. `dvc exp run -S` recomposes params.yaml from conf/ through Hydra and runs the variant.
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "after runs"],
                   cwd=project, check=True)
    done = subprocess.run(
        [str(Path(sys.executable).with_name("dvc")), "exp", "run", "-S", "experiment=smoke",
         "-S", "eval.max_new_tokens=4"],
        cwd=project, env=env, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert yaml.safe_load((project / "params.yaml").read_text())["eval"]["max_new_tokens"] == 4
    assert "Stage 'sft' didn't change" in done.stdout
    assert "Running stage 'evaluate'" in done.stdout


def _cached(store: Path, md5: str) -> bool:
    """Whether a DVC object (file or .dir listing) is in a cache or remote laid out as files/md5/xx/rest."""
    return (store / "files" / "md5" / md5[:2] / md5[2:]).is_file()


def test_failed_gate_stops_before_training_and_keeps_the_good_version(prefect_server: None, project: Path) -> None:
    """A world that fails its gate (images are not the size the gate expects) never reaches SFT, and the
    previous good data and model stay where DVC keeps them."""
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client

    flows = _flow_module(project)
    flows.pipeline(overrides=SMOKE)  # the good version
    good = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    good_world = next(o["md5"] for o in good["generate"]["outs"] if o["path"] == "data/world")
    weights = project / "models" / "sft" / "model" / "model.safetensors"
    weights_stamp = weights.stat().st_mtime_ns

    bad = [*SMOKE, "world.image_size=32", "model.vision.image_size=32", "quality.image_size=64"]
    with pytest.raises(Exception, match="validate"):
        flows.pipeline(overrides=bad, push_to_remote=False)

    report = (project / "reports" / "validate" / "report.txt").read_text()
    assert "scenes.jsonl:1" in report and "width -> 32" in report, report[:2000]
    after = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert after["generate"] != good["generate"], "the bad world was generated"
    assert after["validate"] == good["validate"] and after["sft"] == good["sft"]
    assert weights.stat().st_mtime_ns == weights_stamp, "the model trained on good data was touched"
    client = MlflowClient()
    experiment = client.get_experiment_by_name("silkfire")
    assert len(client.search_runs([experiment.experiment_id], "tags.`silkfire.stage` = 'sft'")) == 1
    # The good world is still in the DVC cache and in the remote it was pushed to.
    assert _cached(project / ".dvc" / "cache", good_world) and _cached(project / ".dvcstore", good_world)
    with get_client(sync_client=True) as prefect:
        keys = {a.key for a in prefect.read_artifacts()}
    assert {"silkfire-validate-failure", "silkfire-validate-failures"} <= keys
