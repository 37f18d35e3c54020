"""`dvc repro pipelines/fire/dvc.yaml` for real, in a throw-away git + DVC copy of the project on a tiny config:
the branch runs after the foundation stages it needs, its lock records all four stages, a second repro does
nothing, and changing a fire_bench-only parameter re-runs fire_bench alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from silkfire.stages import BRANCHES

from .test_fire_stages import TINY

FOUNDATION_TINY = ["train.max_steps=4", "train.batch_size=8", "train.save_steps=2", "train.eval_steps=0",
                   "train.max_eval_samples=8", "train.progress=false", "eval.batch_size=32"]


def _run(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "SILKFIRE_ROOT": str(root), "DVC_NO_ANALYTICS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(list(args), cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow  # the tiny foundation + branch: minutes on a loaded 2-core machine
def test_dvc_repro_of_the_fire_branch(tmp_path: Path, copy_project) -> None:
    root = copy_project(tmp_path / "project")
    overrides = ["experiment=fire_llava", "world.train_scenes=10", "world.val_scenes=2", "world.test_scenes=4",
                 *FOUNDATION_TINY, *TINY]
    _run(root, "silkfire", "params", *overrides)
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "project"]):
        _run(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", *command)

    first = _run(root, "dvc", "repro", "pipelines/fire/dvc.yaml")
    for stage in BRANCHES["fire"]:
        assert f"Running stage 'pipelines/fire/dvc.yaml:{stage}'" in first.stdout, first.stdout
    lock = yaml.safe_load((root / "pipelines" / "fire" / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(BRANCHES["fire"])
    assert {"data/fire/sft", "models/fire_student", "models/fire_teacher"} <= {
        out["path"] for out in lock["stages"]["fire_sft"]["outs"]}  # root-relative (wdir ../..)
    assert (root / "reports" / "fire_bench" / "fire_bench.md").is_file()
    from silkfire.tracking.lineage import stage_digests

    # the run summary and MLflow lineage find branch outputs in pipelines/fire/dvc.lock
    assert stage_digests(root, "fire_sft")["models/fire_student"].endswith(".dir")

    again = _run(root, "dvc", "repro", "pipelines/fire/dvc.yaml")
    assert "Running stage" not in again.stdout, again.stdout

    _run(root, "silkfire", "params", *overrides, "fire.bench.max_turns=2")
    third = _run(root, "dvc", "repro", "pipelines/fire/dvc.yaml")
    ran = [line for line in third.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'pipelines/fire/dvc.yaml:fire_bench':"], third.stdout
