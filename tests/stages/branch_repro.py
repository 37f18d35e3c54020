"""The `dvc repro` cycle both branch tests run in a throw-away git + DVC copy of the project: commit the
project, repro the branch (every stage runs, its lock records them), repro again (nothing runs), change one
parameter (only the stages that read it run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from silkfire.stages import BRANCHES

FOUNDATION_TINY = ["train.max_steps=4", "train.batch_size=8", "train.save_steps=2", "train.eval_steps=0",
                   "train.max_eval_samples=8", "train.progress=false", "eval.batch_size=32"]


def run(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "SILKFIRE_ROOT": str(root), "DVC_NO_ANALYTICS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(list(args), cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def commit_project(root: Path, overrides: list[str]) -> None:
    """params.yaml composed with ``overrides``, then the copy made a git repository."""
    run(root, "silkfire", "params", *overrides)
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "project"]):
        run(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", *command)


def repro_branch(root: Path, branch: str) -> dict[str, Any]:
    """The branch's first repro: every stage runs; returns its dvc.lock, which records exactly those stages."""
    first = run(root, "dvc", "repro", f"pipelines/{branch}/dvc.yaml")
    for stage in BRANCHES[branch]:
        assert f"Running stage 'pipelines/{branch}/dvc.yaml:{stage}'" in first.stdout, first.stdout
    lock = yaml.safe_load((root / "pipelines" / branch / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(BRANCHES[branch])
    return lock


def assert_rerun_only(root: Path, branch: str, overrides: list[str], change: str, stages: list[str]) -> None:
    """A second repro runs nothing; after ``change`` to params exactly ``stages`` run, in that order."""
    again = run(root, "dvc", "repro", f"pipelines/{branch}/dvc.yaml")
    assert "Running stage" not in again.stdout, again.stdout
    run(root, "silkfire", "params", *overrides, change)
    third = run(root, "dvc", "repro", f"pipelines/{branch}/dvc.yaml")
    ran = [line for line in third.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == [f"Running stage 'pipelines/{branch}/dvc.yaml:{stage}':" for stage in stages], third.stdout
