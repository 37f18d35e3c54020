"""`dvc repro pipelines/fire/dvc.yaml` for real, in a throw-away git + DVC copy of the project on a tiny config:
the branch runs after the foundation stages it needs, its lock records all four stages, a second repro does
nothing, and changing a fire_bench-only parameter re-runs fire_bench alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from .branch_repro import FOUNDATION_TINY, assert_rerun_only, commit_project, repro_branch
from .test_fire_stages import TINY


@pytest.mark.slow  # the tiny foundation + branch: minutes on a loaded 2-core machine
def test_dvc_repro_of_the_fire_branch(tmp_path: Path, copy_project) -> None:
    root = copy_project(tmp_path / "project")
    overrides = ["experiment=fire_llava", "world.train_scenes=10", "world.val_scenes=2", "world.test_scenes=4",
                 *FOUNDATION_TINY, *TINY]
    commit_project(root, overrides)

    lock = repro_branch(root, "fire")
    for role in ("student", "teacher"):  # root-relative paths (wdir ../..)
        assert {f"data/fire/sft/{role}", f"models/fire_{role}"} <= {
            out["path"] for out in lock["stages"][f"fire_{role}"]["outs"]}
    assert (root / "reports" / "fire_bench" / "fire_bench.md").is_file()
    from silkfire.tracking.lineage import stage_digests

    # the run summary and MLflow lineage find branch outputs in pipelines/fire/dvc.lock
    assert stage_digests(root, "fire_student")["models/fire_student"].endswith(".dir")

    assert_rerun_only(root, "fire", overrides, "fire.bench.max_turns=2", ["fire_bench"])
    # a teacher-only setting re-trains the teacher (and re-benchmarks), never the student (issue 15)
    assert_rerun_only(root, "fire", [*overrides, "fire.bench.max_turns=2"], "fire.sft.teacher.learning_rate=2e-3",
                      ["fire_teacher", "fire_bench", "register_fire"])
    # renaming a registered model re-registers, it never retrains
    assert_rerun_only(root, "fire", [*overrides, "fire.bench.max_turns=2", "fire.sft.teacher.learning_rate=2e-3"],
                      "fire.sft.registered_teacher=teacher-renamed", ["register_fire"])
