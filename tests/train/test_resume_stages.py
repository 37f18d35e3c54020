"""Resume by default through the stages: `sft` and FIRE's `fire_student` / `fire_teacher` models killed right after a
checkpoint and run again with no flag continue from it (fewer steps, the uninterrupted run's weights) and record the
decision in their MLflow run; and (slow) a real `dvc repro` of `sft` killed with SIGKILL resumes on the next `dvc
repro`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from silkfire.config import compose
from silkfire.models.testing import make_test_model, make_test_world
from silkfire.train import resume

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TINY_SFT = [
    "experiment=smoke", "world.train_scenes=3", "world.val_scenes=1", "world.test_scenes=1",
    "train.max_steps=8", "train.save_steps=2", "train.save_total_limit=2", "train.batch_size=4",
    "train.max_samples=24", "train.logging_steps=1", "train.eval_steps=0", "train.max_eval_samples=8",
    "train.warmup_ratio=0.25", "train.lr_scheduler=cosine", "train.progress=false", "tracking.log_model=false",
]
TINY_FIRE = [
    "fire.sft.teacher.max_steps=6", "fire.sft.teacher.save_steps=2", "fire.sft.teacher.batch_size=4",
    "fire.sft.teacher.max_eval_samples=8", "fire.sft.teacher.logging_steps=1", "fire.sft.teacher.progress=false",
    "fire.sft.student.max_steps=4", "fire.sft.student.save_steps=2", "fire.sft.student.batch_size=4",
    "fire.sft.student.max_eval_samples=8", "fire.sft.student.logging_steps=1", "fire.sft.student.progress=false",
]


class Killed(RuntimeError):
    pass


def dying_callback(monkeypatch: pytest.MonkeyPatch, step: int, outputs: str | None = None) -> None:
    """The stages' MLflow callback, made to die right after checkpoint-<step> (of runs writing under `outputs`):
    the "save" event of silkfire.train.callbacks, the same for SFT and DPO."""
    import silkfire.tracking.curve_logger as callbacks

    real = callbacks.mlflow_logger

    def dying_logger(prefix: str = ""):
        log = real(prefix)

        def callback(event: str, at: int, values: dict) -> None:
            log(event, at, values)
            if event == "save" and at == step and (outputs is None or outputs in values["checkpoint"]):
                raise Killed(f"killed after checkpoint-{step}")

        return callback

    monkeypatch.setattr(callbacks, "mlflow_logger", dying_logger)


def make_project(root: Path, overrides: list[str]) -> Path:
    """params.yaml (the composed tiny config), a generated world and a tiny base model, as `base` would leave it."""
    cfg = compose(overrides, PROJECT_ROOT)
    OmegaConf.save(cfg, root / "params.yaml")
    make_test_world(root / cfg.paths.world, train_scenes=3, val_scenes=1, test_scenes=1)
    make_test_model(root / cfg.paths.base_model)
    from silkfire.stages.runner import run_stage

    run_stage("validate", root)  # the gate's verdict: training refuses data without one
    return root


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def identical(a: Path, b: Path) -> bool:
    first, second = weights(a), weights(b)
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def run_tags(root: Path, run_id: str) -> dict[str, str]:
    from mlflow import MlflowClient

    from silkfire.tracking.store import tracking_uri

    return MlflowClient(tracking_uri(root)).get_run(run_id).data.tags


@pytest.fixture()
def project(mlflow_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SILKFIRE_ROOT", str(mlflow_root))
    return make_project(mlflow_root, TINY_SFT + TINY_FIRE)


def test_sft_stage_killed_after_a_checkpoint_resumes_with_no_flag(project: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from silkfire.stages.runner import run_stage
    from silkfire.tracking.store import tracking_uri

    out = project / "models" / "sft"
    with monkeypatch.context() as patch:
        dying_callback(patch, 4)
        with pytest.raises(Killed):
            run_stage("sft", project)
    assert [p.name for p in resume.complete_checkpoints(out / "checkpoints")] == ["checkpoint-2", "checkpoint-4"]

    again = run_stage("sft", project)  # no flag: params.yaml says train.resume: auto, as the conf default
    assert again["resumed_from_step"] == 4 and again["steps_run"] == 4 and again["global_step"] == 8
    tags = run_tags(project, again["mlflow_run_id"])
    assert tags["silkfire.resume"] == "resumed" and tags["silkfire.resumed_from"] == "4"
    assert "resumed from step 4 (4 steps run)" in tags["silkfire.summary"]
    metric = MlflowClient(tracking_uri(project)).get_run(again["mlflow_run_id"]).data.metrics
    assert metric["steps_run"] == 4 and metric["resumed_from_step"] == 4
    assert json.loads((project / "metrics" / "sft.json").read_text())["steps_run"] == 4
    # the final output keeps its step checkpoints (the silkie pool samples from them)
    assert [p.name for p in resume.complete_checkpoints(out / "checkpoints")] == ["checkpoint-6", "checkpoint-8"]

    # the uninterrupted run: same weights, bit for bit, and all 8 steps
    resumed = project / "resumed_model"
    shutil.copytree(out / "model", resumed)
    cfg = OmegaConf.load(project / "params.yaml")
    cfg.train.resume = False
    OmegaConf.save(cfg, project / "params.yaml")
    straight = run_stage("sft", project)
    assert straight["resumed_from_step"] == 0 and straight["steps_run"] == 8
    tags = run_tags(project, straight["mlflow_run_id"])
    assert tags["silkfire.resume"] == "restarted" and "resume: false" in tags["silkfire.resume_reason"]
    assert identical(resumed, out / "model")


def test_fire_teacher_killed_after_a_checkpoint_resumes_and_the_finished_student_is_not_retrained(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fire_student stage, then fire_teacher killed after a checkpoint, then both stages again (each role's
    training in its own MLflow run, as its stage runs it)."""
    import mlflow

    from silkfire.io import read_records, write_jsonl
    from silkfire.fire.role_training import sets_dir
    from silkfire.fire.role_training import train_role as train_in_run
    from silkfire.tracking.store import configure

    cfg = OmegaConf.load(project / "params.yaml")
    make_test_model(project / cfg.paths.sft / "model", seed=1)  # the foundation's SFT model both start from
    records = [r for r in read_records(project / cfg.paths.world / "train.jsonl") if r["family"] == "mme"][:24]
    for role in ("student", "teacher"):
        sets = sets_dir(cfg, project, role)
        sets.mkdir(parents=True)
        write_jsonl(sets / "train.jsonl", records[:16])
        write_jsonl(sets / "val.jsonl", records[16:])

    def train_role(cfg: Any, project: Path, role: str) -> dict[str, Any]:
        with mlflow.start_run(run_name=f"fire_{role}"):
            return train_in_run(cfg, project, role)
    reference = project.parent / f"{project.name}-reference"  # the uninterrupted teacher, another output folder
    configure(project, cfg.tracking.experiment_name)
    teacher_out = project / cfg.paths.fire_teacher

    student = train_role(cfg, project, "student")
    assert student["steps_run"] == 4
    with monkeypatch.context() as patch:
        dying_callback(patch, 4, outputs=str(cfg.paths.fire_teacher))
        with pytest.raises(Killed):
            train_role(cfg, project, "teacher")
    mlflow.end_run()  # (the killed run ended with the exception) the stage's next run starts clean
    assert [p.name for p in resume.complete_checkpoints(teacher_out / "checkpoints")] == ["checkpoint-2",
                                                                                           "checkpoint-4"]

    # the stage again: the finished student continues from its last checkpoint (nothing to train), the teacher
    # from checkpoint-4
    student_model = project / "student_model"
    shutil.copytree(project / cfg.paths.fire_student / "model", student_model)
    again = train_role(cfg, project, "student")
    assert again["resumed_from_step"] == 4 and again["steps_run"] == 0
    assert identical(student_model, project / cfg.paths.fire_student / "model")
    teacher = train_role(cfg, project, "teacher")
    assert teacher["resumed_from_step"] == 4 and teacher["steps_run"] == 2 and teacher["global_step"] == 6
    runs = mlflow.search_runs(filter_string="tags.`silkfire.role` = 'teacher'", order_by=["start_time DESC"])
    assert runs.iloc[0]["tags.silkfire.resume"] == "resumed" and runs.iloc[0]["tags.silkfire.resumed_from"] == "4"

    # bit-identical to an uninterrupted teacher
    cfg.paths.fire_teacher = str(reference)  # absolute: root / it is itself
    straight = train_role(cfg, project, "teacher")
    assert straight["steps_run"] == 6
    assert identical(reference / "model", teacher_out / "model")


@pytest.mark.slow  # three processes start torch, transformers and MLflow: ~1-2 min on a loaded 2-core machine
def test_dvc_repro_killed_with_sigkill_resumes_on_the_next_repro(copy_project, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`dvc repro` of `sft` (the command `silkfire run` runs per stage) SIGKILLed once a checkpoint is on disk;
    `dvc repro` again, no flag: DVC keeps the `persist` output, the stage resumes from the newest checkpoint,
    runs fewer steps and ends with the weights of an uninterrupted run (bit-identical)."""
    root = copy_project(tmp_path / "project")
    overrides = [o for o in TINY_SFT if not o.startswith("train.max_steps")] + ["train.max_steps=40"]
    make_project(root, overrides)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "project"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                       capture_output=True)
    env = {**os.environ, "SILKFIRE_ROOT": str(root), "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("SILKFIRE_PARENT_RUN_ID", None)
    checkpoints = root / "models" / "sft" / "checkpoints"

    repro = ["dvc", "repro", "--single-item", "sft"]
    killed = subprocess.Popen(repro, cwd=root, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    def newest() -> int:
        found = resume.complete_checkpoints(checkpoints)
        return resume.checkpoint_step(found[-1]) if found else 0

    while newest() < 20 and killed.poll() is None and time.monotonic() < deadline:  # half-way
        time.sleep(0.02)
    os.killpg(killed.pid, signal.SIGKILL)  # dvc and the stage it runs
    killed.wait()
    at_kill = [resume.checkpoint_step(p) for p in resume.complete_checkpoints(checkpoints)]
    assert at_kill and 20 <= at_kill[-1] < 40, f"the run was not killed mid-training: {at_kill}"

    finished = subprocess.run(repro, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    metrics = json.loads((root / "metrics" / "sft.json").read_text())
    resumed_step = metrics["resumed_from_step"]
    assert resumed_step >= at_kill[-1] > 0  # (the killed run may have saved one more before the signal landed)
    assert metrics["steps_run"] == 40 - resumed_step < 40
    assert f"resumed from {checkpoints / f'checkpoint-{resumed_step}'}" in finished.stdout + finished.stderr
    print(f"\nSIGKILL with checkpoint-{at_kill[-1]} on disk; the next repro resumed from step {resumed_step} and "
          f"ran {metrics['steps_run']} of 40 steps")
    from mlflow import MlflowClient

    from silkfire.tracking.store import tracking_uri

    client = MlflowClient(tracking_uri(root))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`silkfire.resume` = 'resumed'")
    assert len(runs) == 1 and runs[0].data.tags["silkfire.resumed_from"] == str(resumed_step)
    assert runs[0].data.metrics["steps_run"] == 40 - resumed_step

    # the uninterrupted run, in-process in a copy of the project before training
    from silkfire.stages.runner import run_stage

    reference = tmp_path / "reference"
    top_level = {"models", ".dvc", ".git", "metrics"}
    shutil.copytree(root, reference, ignore=lambda folder, names: top_level & set(names) if Path(folder) == root
                    else set())
    shutil.copytree(root / "models" / "base", reference / "models" / "base")
    monkeypatch.setenv("SILKFIRE_ROOT", str(reference))
    straight = run_stage("sft", reference)
    assert straight["steps_run"] == 40 and straight["resumed_from_step"] == 0
    assert identical(root / "models" / "sft" / "model", reference / "models" / "sft" / "model")
