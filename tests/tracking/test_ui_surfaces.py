"""What a person sees in the MLflow UI and the terminal: names, descriptions, headline metrics, links, wrapping."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from silkfire.reporting import StageRow, headline_metrics, markdown_table, parent_run_name
from silkfire.train.callbacks import curve_name
from silkfire.tracking.champion import ChampionRule, run_gate
from silkfire.tracking.runs import description
from silkfire.tracking.store import EXPERIMENT_DESCRIPTION, NOTE_TAG, configure, run_url, runs_view_url


def test_one_name_per_metric_in_training_curves() -> None:
    # Trainer's step logs, eval logs and end-of-training summary: no `train/train_loss` beside `train/loss`.
    assert curve_name("loss") == "train/loss"
    assert curve_name("grad_norm") == "train/grad_norm"
    assert curve_name("learning_rate") == "train/learning_rate"
    assert curve_name("eval_loss") == "eval/loss"
    assert curve_name("train_loss") == "train/loss_mean"  # the stage's train_loss_mean, not its final train_loss
    for timing in ("train_runtime", "train_samples_per_second", "total_flos", "eval_runtime"):
        assert curve_name(timing) is None


def test_experiment_gets_a_description_once(mlflow_root: Path) -> None:
    experiment_id = configure(mlflow_root, "exp")
    client = MlflowClient()
    assert client.get_experiment(experiment_id).tags[NOTE_TAG] == EXPERIMENT_DESCRIPTION
    client.set_experiment_tag(experiment_id, NOTE_TAG, "edited by a person")
    configure(mlflow_root, "exp")  # never overwrites a description someone wrote
    assert client.get_experiment(experiment_id).tags[NOTE_TAG] == "edited by a person"


def test_links_open_the_runs_table_not_the_genai_view() -> None:
    assert runs_view_url("3", "http://127.0.0.1:5000") == \
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
    assert run_url("3", "abc", "http://h:1/") == "http://h:1/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert run_url("3", "abc", "http://h:1", "model-metrics").endswith("/runs/abc/model-metrics?workflowType=machine_learning")


def test_parent_run_name_and_headline_metrics(tmp_path: Path) -> None:
    assert parent_run_name(["experiment=silkie", "seed=1"], 1, "merciful-foxhound") == \
        "pipeline · silkie · seed 1 · merciful-foxhound"
    assert parent_run_name([], 0, "x") == "pipeline · default · seed 0 · x"
    cfg = OmegaConf.create({"paths": {"metrics": "metrics"}})
    (tmp_path / "metrics").mkdir()
    files = {
        "validate": {"success": True, "rows_quarantined": 0},
        "sft": {"train_loss": 0.07, "eval_loss": 0.06, "train_loss_mean": 0.5},
        "evaluate": {"mme": {"sft": {"perception": 625.8, "cognition": 312.1},
                             "blind": {"perception": 232.1, "cognition": 120.0}}},
        "evaluate_dpo": {"dpo": {"mmhal_score": 3.5, "hallucination_rate": 0.16, "mme_perception": 622.0,
                                 "mme_cognition": 311.7}},
        "fire_bench": {"free": {"oracle": {"fire": {"AT": 1.75, "RR": 0.34}, "sft": {"AT": 1.41, "RR": 0.2}}}},
        "register": {"promoted": False},
    }
    for stage, metrics in files.items():
        (tmp_path / "metrics" / f"{stage}.json").write_text(json.dumps(metrics))
    found = headline_metrics(tmp_path, cfg, list(files))
    assert found["evaluate.mme.sft.perception"] == 625.8
    assert found["evaluate_dpo.dpo.mmhal_score"] == 3.5
    assert found["evaluate_dpo.dpo.hallucination_rate"] == 0.16
    assert found["fire_bench.free.oracle.fire.AT"] == 1.75 and found["fire_bench.free.oracle.fire.RR"] == 0.34
    assert found["gates.passed"] == 1.0 and found["register.promoted"] == 0.0
    # a branch that is not part of this pipeline run: its old metrics files are not copied
    assert not any(key.startswith("evaluate_dpo") for key in headline_metrics(tmp_path, cfg, ["evaluate"]))

    rows = [StageRow("sft", "ran", "train_loss=0.07", "r" * 32, "abc.dir", 1.0)]
    table = markdown_table(rows, "p" * 32, 12.0, headline=found, experiment_id="7", title="pipeline · x")
    assert "| evaluate.mme.sft.perception | 625.8 |" in table
    assert "(http://127.0.0.1:5000/#/experiments/7/runs/" + "r" * 32 + "?workflowType=machine_learning)" in table


def test_a_long_description_is_cut_at_a_line_end_with_a_pointer() -> None:
    text = "\n".join(f"| row {i} | {'x' * 50} |" for i in range(400))
    cut = description(text, 2000)
    assert len(cut) <= 2000 and "summary.md" in cut
    assert all(line.endswith("|") for line in cut.splitlines()[:-2] if line)
    assert description("short") == "short"


def test_champion_decision_is_the_version_description_in_full(mlflow_root: Path) -> None:
    configure(mlflow_root, "exp")
    client = MlflowClient()
    client.create_registered_model("m")
    version = client.create_model_version("m", source=str(mlflow_root / "v1")).version
    rule = ChampionRule.from_mapping({"primary": {"metric": "val.p"}, "guards": {"val.c": {"tolerance": 5}}})
    decision, _ = run_gate(client, "m", int(version), "champion", rule, {"val": {"p": 100.0, "c": 50.0}})
    text = client.get_model_version("m", version).description
    assert decision.reason in text and "| val.c | guard |" in text


def test_models_listing_wraps_decisions_at_word_boundaries(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from silkfire import cli
    from silkfire.tracking import inventory

    reason = ("rejected: mme.sft.perception gain 0.4 is below the margin 1 and the guard mme.sft.cognition "
              "drops by 12.5 (> tolerance 10): the champion keeps its alias until a challenger wins on both")
    rows = [{"name": "silkfire-sft", "version": 3, "aliases": ["candidate"], "run_id": "r", "created": 0,
             "metrics": {"mme.sft.perception": 600.0}, "decision": reason}]
    monkeypatch.setattr(cli, "_tracking_client", lambda: None)
    monkeypatch.setattr(inventory, "list_models", lambda client: rows)
    monkeypatch.setenv("COLUMNS", "80")
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    words = " ".join(line.strip() for line in out.splitlines()[2:]).removeprefix("decision: ")
    assert words == reason  # every word, none cut
    assert max(len(line) for line in out.splitlines()) <= 80


def test_ui_prints_the_runs_view_link(mlflow_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from silkfire import cli

    (mlflow_root / "params.yaml").write_text("tracking:\n  experiment_name: exp\n")
    monkeypatch.setattr("silkfire.config.load_params",
                        lambda root: OmegaConf.create({"tracking": {"experiment_name": "exp"}}))
    links = cli.ui_links(mlflow_root, "0.0.0.0", 5001)
    experiment_id = mlflow.get_experiment_by_name("exp").experiment_id
    assert f"http://127.0.0.1:5001/#/experiments/{experiment_id}/runs?workflowType=machine_learning" in links


def test_a_cached_stage_points_at_the_run_that_trained_it(mlflow_root: Path) -> None:
    from silkfire.reporting import latest_stage_run

    configure(mlflow_root, "exp")
    with mlflow.start_run(run_name="sft", tags={"silkfire.stage": "sft"}) as trained:
        pass
    with mlflow.start_run(run_name="sft (cached)", tags={"silkfire.stage": "sft", "silkfire.cached": "true",
                                                          "silkfire.produced_by": trained.info.run_id}) as first:
        pass
    # a record written by the old rule pointed at the previous cached record: followed to the end
    with mlflow.start_run(run_name="sft (cached)", tags={"silkfire.stage": "sft", "silkfire.cached": "true",
                                                          "silkfire.produced_by": first.info.run_id}):
        pass
    assert latest_stage_run("sft", None) == trained.info.run_id


def test_gate_report_renders_without_network(tmp_path: Path) -> None:
    from silkfire.tracking.gates import write_html_report

    assert write_html_report(tmp_path) is None  # no report.md: nothing to render
    (tmp_path / "report.md").write_text("# Data quality gate `world`: failed\n\n| file | failed |\n|---|---:|\n"
                                        "| `train.jsonl` <script>alert(1)</script> | 2 |\n")
    page = write_html_report(tmp_path).read_text()
    assert "<table>" in page and "<td><code>train.jsonl</code>" in page
    assert "<script" not in page and "http" not in page  # nothing to fetch, nothing to run


def test_only_finite_numbers_reach_mlflow() -> None:
    """One filter for every metrics sink (stage runner, launched SFT, training curves): MLflow takes finite numbers."""
    from silkfire.train.callbacks import finite_numbers

    values = {"loss": 0.5, "step": 3, "ok": True, "nan": float("nan"), "inf": float("inf"), "name": "x"}
    assert finite_numbers(values) == {"loss": 0.5, "step": 3.0}
