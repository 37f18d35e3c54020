"""Sweeps: Hydra sweep syntax, metric lookup, and real sweeps in a throw-away git + DVC copy of the project
(one `dvc exp run -S` per point, listed by `dvc exp show`; one MLflow child run per point; plot and table)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from silkfire.sweeps import PointResult, SweepError, parse_overrides, plot, read_metric, run_sweep

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# The end-to-end fixtures (a tmp git + DVC copy of the project, a Prefect test server) live in
# tests/e2e/conftest.py, which pytest only applies below tests/e2e: load them here too.
_spec = importlib.util.spec_from_file_location("silkfire_e2e_fixtures", PROJECT_ROOT / "tests" / "e2e" / "conftest.py")
_e2e = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_e2e)
project = _e2e.project
prefect_server = _e2e.prefect_server


def test_parse_overrides_splits_swept_and_fixed_keys() -> None:
    spec = parse_overrides(["train.learning_rate=1e-3,2e-3", "experiment=smoke", "world.train_scenes=range(2,5,2)"])
    assert spec.swept == {"train.learning_rate": ["0.001", "0.002"], "world.train_scenes": ["2", "4"]}
    assert spec.fixed == ["experiment=smoke"]
    # several swept keys: their cartesian product, in order (as hydra --multirun)
    assert spec.points() == [
        {"train.learning_rate": "0.001", "world.train_scenes": "2"},
        {"train.learning_rate": "0.001", "world.train_scenes": "4"},
        {"train.learning_rate": "0.002", "world.train_scenes": "2"},
        {"train.learning_rate": "0.002", "world.train_scenes": "4"},
    ]
    # keys that do not exist yet (another branch's config) parse: composing them is what checks them
    assert parse_overrides(["silkie.dpo.beta=0.05,0.1,0.2"]).swept == {"silkie.dpo.beta": ["0.05", "0.1", "0.2"]}


@pytest.mark.parametrize(("overrides", "message"), [
    (["experiment=smoke"], "nothing to sweep"),
    (["world.train_scenes=glob(*)"], "list the values"),
    (["world.train_scenes=2,,"], "cannot parse"),
])
def test_parse_overrides_refuses_what_it_cannot_sweep(overrides: list[str], message: str) -> None:
    with pytest.raises(SweepError, match=message):
        parse_overrides(overrides)


def test_cli_reports_a_sweep_it_cannot_run(capsys: pytest.CaptureFixture[str], tmp_path: Path, copy_project,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from silkfire.cli import main

    # a copy of the project: the command takes its workspace lock, which must not be the checkout's (a `make run`
    # there would make this test fail with "busy", and a killed test run would leave a holder record behind)
    monkeypatch.setenv("SILKFIRE_ROOT", str(copy_project(tmp_path / "project")))
    assert main(["sweep", "experiment=smoke", "--metric", "sft.eval_loss"]) == 2
    assert "nothing to sweep" in capsys.readouterr().err


def test_read_metric_walks_dotted_keys_and_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "evaluate.json").write_text(json.dumps({"mme": {"sft": {"perception": 305.0}}, "note": "x"}))
    assert read_metric(tmp_path, "evaluate.mme.sft.perception") == 305.0
    with pytest.raises(SweepError, match=r"no key 'mme.base'.*\['sft'\]"):
        read_metric(tmp_path, "evaluate.mme.base.perception")
    with pytest.raises(SweepError, match="not a number"):
        read_metric(tmp_path, "evaluate.note")
    with pytest.raises(SweepError, match="sft.json is missing"):
        read_metric(tmp_path, "sft.train_loss")
    with pytest.raises(SweepError, match="FILE.KEY"):
        read_metric(tmp_path, "evaluate")


def test_plot_draws_one_line_per_other_swept_value() -> None:
    swept = {"fire.dialogues.train_questions": ["300", "1200", "2400"], "seed": ["0", "1"]}
    points = [PointResult(i, {"fire.dialogues.train_questions": n, "seed": s}, f"e{i}", f"r{i}", "done",
                          metric=float(n) / 100 + int(s))
              for i, (n, s) in enumerate((n, s) for n in swept["fire.dialogues.train_questions"] for s in ("0", "1"))]
    figure = plot(points, swept, "fire_bench.score")
    axes = figure.axes[0]
    assert len(axes.lines) == 2 and axes.get_xlabel() == "fire.dialogues.train_questions"
    assert list(axes.lines[0].get_xdata()) == [300.0, 1200.0, 2400.0]
    assert list(axes.lines[1].get_ydata()) == [4.0, 13.0, 25.0]


def test_a_point_that_does_not_compose_fails_before_anything_runs(tmp_path: Path) -> None:
    shutil.copytree(PROJECT_ROOT / "conf", tmp_path / "conf")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    with pytest.raises(SweepError, match="no_such_key"):
        run_sweep(["world.no_such_key=1,2"], "generate.scenes.train", root=tmp_path)
    assert not (tmp_path / "mlruns").exists()  # nothing tracked, nothing run


@pytest.mark.parametrize("overrides", [
    # docs/experiments.md: the FIRE data-size ablation and the Silkie beta sweep
    ["fire.dialogues.train_questions=300,600,1200,2400", "experiment=fire_llava"],
    ["silkie.dpo.beta=0.05,0.1,0.2,0.5", "experiment=silkie"],
])
def test_documented_sweeps_compose_at_every_point(overrides: list[str]) -> None:
    from silkfire.config import compose

    spec = parse_overrides(overrides)
    (key, values), = spec.swept.items()
    for point in spec.points():
        cfg = compose([*spec.fixed, f"{key}={point[key]}"], PROJECT_ROOT)
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert str(node) == point[key] or float(node) == float(point[key])
    assert key in (PROJECT_ROOT / "docs" / "experiments.md").read_text()


def _stage_runs_under(client, experiment_id: str, run_id: str) -> list:
    return client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")


@pytest.mark.e2e
def test_dvc_sweep_runs_one_experiment_and_one_child_run_per_point(project: Path) -> None:
    from mlflow import MlflowClient

    result = run_sweep(["world.train_scenes=4,8", "experiment=smoke"], "generate.scenes.train",
                       targets=["generate"], name="scenes", root=project)
    assert result["failed"] == 0
    rows = result["points"]
    assert [(row["world.train_scenes"], row["generate.scenes.train"]) for row in rows] == [("4", 4.0), ("8", 8.0)]
    assert [row["experiment"] for row in rows] == ["scenes-0", "scenes-1"]

    # dvc exp show lists both experiments with the swept param; each experiment's commit holds the stage's metrics
    # file (a plain output: only the evaluation stages' table rows are DVC metrics, silkfire.reporting)
    shown = subprocess.run([str(Path(sys.executable).with_name("dvc")), "exp", "show", "--json"], cwd=project,
                           capture_output=True, text=True, check=True).stdout
    experiments = {}
    for baseline in json.loads(shown):
        for exp in baseline.get("experiments") or []:
            for revision in exp["revs"]:
                saved = subprocess.run(["git", "show", f"{revision['rev']}:metrics/generate.json"], cwd=project,
                                       capture_output=True, text=True, check=True).stdout
                experiments[revision["name"]] = (
                    revision["data"]["params"]["params.yaml"]["data"]["world"]["train_scenes"],
                    json.loads(saved)["scenes"]["train"],
                )
    assert experiments == {"scenes-0": (4, 4), "scenes-1": (8, 8)}

    client = MlflowClient()
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["silkfire.sweep"] == "scenes"
    assert parent.data.params["sweep.world.train_scenes"] == "4,8"
    experiment_id = parent.info.experiment_id
    children = {run.info.run_name: run for run in _stage_runs_under(client, experiment_id, parent.info.run_id)}
    assert set(children) == {"scenes-0", "scenes-1"}
    for name, scenes in (("scenes-0", 4), ("scenes-1", 8)):
        child = children[name]
        assert child.data.params["sweep.world.train_scenes"] == str(scenes)
        assert child.data.metrics["sweep/generate.scenes.train"] == scenes
        assert child.data.tags["silkfire.dvc.experiment"] == name
        # the stage's own run nests under the point's run, with the point's params
        stages = _stage_runs_under(client, experiment_id, child.info.run_id)
        assert [run.data.tags["silkfire.stage"] for run in stages] == ["generate"]
        assert stages[0].data.params["world.train_scenes"] == str(scenes)
    history = client.get_metric_history(parent.info.run_id, "sweep/generate.scenes.train")
    assert [(m.step, m.value) for m in history] == [(0, 4.0), (1, 8.0)]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert artifacts == {"sweep/generate.scenes.train.png", "sweep/results.csv", "sweep/results.md",
                         "sweep/results.json"}
    table = client.download_artifacts(parent.info.run_id, "sweep/results.md")
    assert "| 8 | 8 | done | scenes-1 |" in Path(table).read_text()


@pytest.mark.e2e
@pytest.mark.slow
def test_flow_sweep_nests_each_pipeline_run_under_the_sweep(prefect_server: None, project: Path) -> None:
    """--mode flow: the Prefect flow per point (smoke run; the second point re-runs only `evaluate`)."""
    from mlflow import MlflowClient

    result = run_sweep(["eval.max_items=12,24", "experiment=smoke"], "evaluate.val.mme.sft.perception",
                       mode="flow", name="items", root=project)
    assert result["failed"] == 0 and len(result["points"]) == 2
    client = MlflowClient()
    parent = client.get_run(result["parent_run_id"])
    children = _stage_runs_under(client, parent.info.experiment_id, parent.info.run_id)
    assert sorted(run.data.params["sweep.eval.max_items"] for run in children) == ["12", "24"]
    assert all(run.data.tags["silkfire.kind"] == "pipeline" for run in children)
    for run in children:  # the stages still nest under their pipeline run
        assert {r.data.tags["silkfire.stage"] for r in _stage_runs_under(client, parent.info.experiment_id,
                                                                         run.info.run_id)} >= {"evaluate"}


# A tiny foundation + FIRE branch (the same sizes as the FIRE stage tests use).
FIRE_TINY = [
    "experiment=fire_llava", "world.train_scenes=10", "world.val_scenes=2", "world.test_scenes=4",
    "train.max_steps=4", "train.batch_size=8", "train.save_steps=2", "train.eval_steps=0", "train.max_eval_samples=8",
    "train.progress=false", "eval.batch_size=32",
    "fire.dialogues.test_questions=12", "fire.dialogues.progress=false", "fire.sft.val_fraction=0.1",
    "fire.sft.mix_sft=0.25", "fire.sft.student.max_steps=4", "fire.sft.student.batch_size=8",
    "fire.sft.student.progress=false", "fire.sft.student.max_eval_samples=8", "fire.sft.teacher.max_steps=3",
    "fire.sft.teacher.batch_size=8", "fire.sft.teacher.progress=false", "fire.sft.teacher.max_eval_samples=8",
    "fire.bench.max_dialogues=6", "fire.bench.fixed_items=6", "fire.bench.max_turns=3",
    "fire.bench.student_max_new_tokens=12", "fire.bench.teacher_max_new_tokens=12", "fire.bench.progress=false",
    "fire.bench.teachers=[oracle]",
]


@pytest.mark.e2e
@pytest.mark.slow
def test_fire_data_size_ablation_command_on_a_tiny_config(project: Path) -> None:
    """docs/experiments.md's FIRE ablation (its key, target and metric) on a tiny world and tiny trainings."""
    from mlflow import MlflowClient

    result = run_sweep(["fire.dialogues.train_questions=20,40", *FIRE_TINY], "fire_bench.val.free.oracle.fire.RR",
                       targets=["pipelines/fire/dvc.yaml"], name="fire-data-size", root=project)
    assert result["failed"] == 0, result["points"]
    values = [row["fire_bench.val.free.oracle.fire.RR"] for row in result["points"]]
    assert all(0.0 <= value <= 1.0 for value in values)
    dialogues = [json.loads((project / "metrics" / "dialogues.json").read_text())]
    assert dialogues  # the last point's dialogues metrics are in the workspace
    client = MlflowClient()
    parent = client.get_run(result["parent_run_id"])
    children = {run.info.run_name: run for run in _stage_runs_under(client, parent.info.experiment_id,
                                                                     parent.info.run_id)}
    ran = {name: {r.data.tags["silkfire.stage"] for r in _stage_runs_under(client, parent.info.experiment_id,
                                                                           run.info.run_id)}
           for name, run in children.items()}
    assert {"generate", "sft", "dialogues", "fire_student", "fire_teacher", "fire_bench"} <= ran["fire-data-size-0"]
    # the second point re-runs the branch only: the foundation comes from the first point
    assert {"dialogues", "fire_student", "fire_teacher", "fire_bench"} <= ran["fire-data-size-1"]
    assert not {"generate", "base", "sft"} & ran["fire-data-size-1"]
