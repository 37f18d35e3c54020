"""`dvc repro pipelines/silkie/dvc.yaml` for real, in a throw-away git + DVC copy of the project on a tiny config:
the branch runs after the foundation, its lock records its stages, a second repro does nothing, and changing a
DPO-only parameter re-runs dpo, evaluate_dpo and the DPO champion gate alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .branch_repro import FOUNDATION_TINY, assert_rerun_only, commit_project, repro_branch
from .test_silkie_stages import TINY


@pytest.mark.slow  # the tiny foundation + branch: minutes on a loaded 2-core machine
def test_dvc_repro_of_the_silkie_branch(tmp_path: Path, copy_project) -> None:
    root = copy_project(tmp_path / "project")
    overrides = [*TINY, "world.train_scenes=10", "world.val_scenes=2", "world.test_scenes=8", *FOUNDATION_TINY,
                 "train.num_threads=1", "silkie.sample.num_threads=1", "silkie.evaluate.num_threads=1"]
    commit_project(root, overrides)

    lock = repro_branch(root, "silkie")
    assert {"data/feedback/pairs.jsonl", "reports/pairs"} <= {out["path"] for out in lock["stages"]["pairs"]["outs"]}
    evaluation = json.loads((root / "metrics" / "evaluate_dpo.json").read_text())
    assert {"sft", "dpo", "gain"} <= set(evaluation)
    assert (root / "reports" / "evaluate_dpo" / "comparison.md").is_file()
    from silkfire.tracking.lineage import stage_digests

    assert stage_digests(root, "dpo")["models/dpo"].endswith(".dir")

    assert_rerun_only(root, "silkie", overrides, "silkie.dpo.beta=0.2", ["dpo", "evaluate_dpo", "register_dpo"])
