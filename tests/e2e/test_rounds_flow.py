"""Three alignment rounds at smoke scale through the real Prefect flow, DVC and MLflow registry: round 1 (from the SFT
model) is promoted, round 2 starts from round 1's champion and loses, so round 3 starts from the same champion;
a finished series does no work, an interrupted round re-runs from its recorded start with nothing left to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from .test_silkie_flow import TINY_FLOW

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
WINS = [*TINY_FLOW, "silkie.register.baseline=null"]  # no champion and no baseline: round 1 becomes champion
LOSES = [*TINY_FLOW, "silkie.register.baseline=null", "silkie.register.min_margin=100"]  # nothing beats it


def pipeline_runs(client, experiment_id: str) -> int:  # noqa: ANN001
    return len(client.search_runs([experiment_id], "tags.`silkfire.kind` = 'pipeline'"))


def test_three_rounds_promote_only_a_winner_and_resume(prefect_server: None, project: Path) -> None:
    from mlflow import MlflowClient

    from silkfire.cli import load_flow_module
    from silkfire.rounds import manifest_path, show
    from silkfire.config import compose

    flows = load_flow_module(project)
    first = flows.alignment_rounds(rounds=1, overrides=WINS, name="t", push_to_remote=False)["rounds"][0]
    assert first["status"] == "done" and first["start"]["version"] is None
    assert first["start"]["path"] == "models/sft/model"
    assert first["promoted"] and first["replayed"] == 0
    assert first["champion_after"] == {"model": "silkfire-dpo", "version": first["challenger_version"]}
    client = MlflowClient()
    assert int(client.get_model_version_by_alias("silkfire-dpo", "champion").version) == first["challenger_version"]

    second = flows.alignment_rounds(rounds=2, overrides=LOSES, name="t", push_to_remote=False)["rounds"][1]
    champion = first["challenger_version"]
    assert second["start"]["version"] == champion  # round 2 starts from round 1's champion ...
    start = project / second["start"]["path"]
    assert (start / "config.json").is_file() and "models/champion/silkfire-dpo-v" in second["start"]["path"]
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["silkie"]["start_model"] == second["start"]["path"]  # ... as DPO's start and reference
    assert params["silkie"]["sample"]["pool"]["champion"]["path"] == second["start"]["path"]  # and a pool member
    lock = yaml.safe_load((project / "pipelines" / "silkie" / "dvc.lock").read_text())
    assert second["start"]["path"] in {dep["path"] for dep in lock["stages"]["dpo"]["deps"]}
    samples = [json.loads(line) for line in (project / "data" / "feedback" / "samples.jsonl").open()]
    assert any(c["model"] == "champion" for record in samples for c in record["completions"])
    assert not second["promoted"] and second["challenger_version"] > champion  # ... and loses:
    assert second["champion_after"]["version"] == champion  # the old champion stays
    assert int(client.get_model_version_by_alias("silkfire-dpo", "champion").version) == champion
    assert second["replayed"] > 0 and second["pairs"] > second["replayed"]  # round 1's pairs replayed

    manifest = flows.alignment_rounds(more=1, overrides=LOSES, name="t", push_to_remote=False)
    third = manifest["rounds"][2]
    assert third["start"]["version"] == champion and third["seed"] == first["seed"] + 2
    replayed_from = next(o for o in third["overrides"] if o.startswith("silkie.pairs.replay.sources="))
    assert "round1" in replayed_from and "round2" in replayed_from

    # MLflow: one parent for the series, each round's pipeline run its child, the curve per round
    experiment = client.get_experiment_by_name("silkfire")
    parent = client.get_run(manifest["parent_run_id"])
    assert parent.data.tags["silkfire.rounds"] == "t"
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(run.data.tags["silkfire.round"] for run in children) == ["1", "2", "3"]
    history = client.get_metric_history(parent.info.run_id, "rounds/promoted")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 1.0), (2, 0.0), (3, 0.0)]

    # a finished series does no work
    before = pipeline_runs(client, experiment.experiment_id)
    flows.alignment_rounds(rounds=3, overrides=LOSES, name="t", push_to_remote=False)
    assert pipeline_runs(client, experiment.experiment_id) == before
    # an interrupted round (planned, not done) re-runs from its recorded start; its stages are all cached
    cfg = compose(LOSES, project)
    path = manifest_path(project, cfg, "t")
    saved = json.loads(path.read_text())
    saved["rounds"][2]["status"] = "planned"
    path.write_text(json.dumps(saved))
    again = flows.alignment_rounds(rounds=3, overrides=LOSES, name="t", push_to_remote=False)["rounds"][2]
    assert again["start"] == third["start"] and again["status"] == "done"
    assert again["stages_ran"] == [] and "dpo" in third["stages_ran"]

    table = show("t", project)
    assert table.count("\n| ") == 3 and (path.parent / "rounds.png").is_file()
    assert f"Final champion: v{champion} (round 1)" in table
