"""`dvc repro pipelines/silkie/dvc.yaml` for real, in a throw-away git + DVC copy of the project on a tiny config:
the branch runs after the foundation, its lock records the six stages, a second repro does nothing, and changing
a DPO-only parameter re-runs dpo and evaluate_dpo alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from silkfire.stages import BRANCHES

from .test_fire_pipeline import FOUNDATION_TINY, _run
from .test_silkie_stages import TINY


@pytest.mark.slow  # the tiny foundation + branch: minutes on a loaded 2-core machine
def test_dvc_repro_of_the_silkie_branch(tmp_path: Path, copy_project) -> None:
    root = copy_project(tmp_path / "project")
    overrides = [*TINY, "world.train_scenes=10", "world.val_scenes=2", "world.test_scenes=8", *FOUNDATION_TINY,
                 "train.num_threads=1", "silkie.sample.num_threads=1", "silkie.evaluate.num_threads=1"]
    _run(root, "silkfire", "params", *overrides)
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "project"]):
        _run(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", *command)

    first = _run(root, "dvc", "repro", "pipelines/silkie/dvc.yaml")
    for stage in BRANCHES["silkie"]:
        assert f"Running stage 'pipelines/silkie/dvc.yaml:{stage}'" in first.stdout, first.stdout
    lock = yaml.safe_load((root / "pipelines" / "silkie" / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(BRANCHES["silkie"])
    assert {"data/feedback/pairs.jsonl", "reports/pairs"} <= {out["path"] for out in lock["stages"]["pairs"]["outs"]}
    evaluation = json.loads((root / "metrics" / "evaluate_dpo.json").read_text())
    assert {"sft", "dpo", "gain"} <= set(evaluation)
    assert (root / "reports" / "evaluate_dpo" / "comparison.md").is_file()
    from silkfire.tracking.lineage import stage_digests

    assert stage_digests(root, "dpo")["models/dpo"].endswith(".dir")

    again = _run(root, "dvc", "repro", "pipelines/silkie/dvc.yaml")
    assert "Running stage" not in again.stdout, again.stdout

    _run(root, "silkfire", "params", *overrides, "silkie.dpo.beta=0.2")
    third = _run(root, "dvc", "repro", "pipelines/silkie/dvc.yaml")
    ran = [line for line in third.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'pipelines/silkie/dvc.yaml:dpo':",
                   "Running stage 'pipelines/silkie/dvc.yaml:evaluate_dpo':"], third.stdout
