"""`silkfire run experiment=smoke "pipeline.branches=[silkie,fire]" model=llava_1_5_7b model.name_or_path=<folder>`
on tiny checkpoints of each real architecture in its hub layout: the Prefect flow runs the foundation and both
branches through DVC, every stage green. A checkpoint rebuilt in place (same path, other weights) re-runs `base`
and every stage that starts from it; the world stages stay cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from silkfire.models.testing import REAL_FAMILIES, make_real_checkpoint
from silkfire.stages import pipeline_stages

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
# The branches' defaults at a size that keeps each run to a few minutes on 2 cores.
SIZES = [
    "train.num_threads=1", "silkie.sample.max_instructions=16", "silkie.sample.max_new_tokens=8",
    "silkie.sample.progress=false", "silkie.sample.num_threads=1", "silkie.dpo.max_steps=4", "silkie.dpo.batch_size=4",
    "silkie.dpo.num_threads=1", "silkie.dpo.progress=false", "silkie.evaluate.mme_max_items=16",
    "silkie.evaluate.mmhal_max_items=8", "silkie.evaluate.mmhal_max_new_tokens=8", "silkie.evaluate.num_threads=1",
    "fire.dialogues.train_questions=40", "fire.dialogues.test_questions=6", "fire.dialogues.progress=false",
    "fire.sft.val_fraction=0.1",
    "fire.sft.student.max_steps=3", "fire.sft.teacher.max_steps=3", "fire.bench.max_dialogues=4",
    "fire.bench.fixed_items=4", "fire.bench.max_turns=2", "fire.bench.student_max_new_tokens=8",
    "fire.bench.teacher_max_new_tokens=8", "fire.bench.progress=false",
]


@pytest.mark.parametrize("family", REAL_FAMILIES)
def test_the_flow_runs_both_branches_on_a_real_architecture(prefect_server: None, project: Path, tmp_path: Path,
                                                            family: str) -> None:
    from silkfire.cli import load_flow_module

    checkpoint = make_real_checkpoint(family, tmp_path / "checkpoint")
    overrides = ["experiment=smoke", "pipeline.branches=[silkie,fire]", "model=llava_1_5_7b",
                 f"model.name_or_path={checkpoint}", *SIZES]
    flows = load_flow_module(project)
    rows = flows.pipeline(overrides=overrides, push_to_remote=False)
    assert [row["stage"] for row in rows] == list(pipeline_stages(["silkie", "fire"]))
    assert all(row["status"] == "ran" for row in rows), rows
    if family != "llava":
        return
    make_real_checkpoint(family, checkpoint, seed=1)  # rebuilt in place: same folder, other weights
    again = {row["stage"]: row["status"] for row in flows.pipeline(overrides=overrides, push_to_remote=False)}
    assert all(again[stage] != "ran" for stage in ("generate", "validate", "dialogues")), again
    for stage in ("base", "sft", "evaluate", "sample", "dpo", "evaluate_dpo", "fire_student", "fire_teacher",
                  "fire_bench"):
        assert again[stage] == "ran", (stage, again)
