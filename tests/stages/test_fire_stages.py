"""The FIRE branch's four stages on a tiny world and model, through the stage runner (real MLflow store, real
quality gate, real training): dialogues -> validate_dialogues -> fire_student, fire_teacher -> fire_bench."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from silkfire.config import compose

PROJECT_ROOT = Path(__file__).resolve().parents[2]

TINY = [
    "world.train_scenes=10", "world.val_scenes=2", "world.test_scenes=4",
    "fire.dialogues.train_questions=40", "fire.dialogues.test_questions=12", "fire.dialogues.val_questions=6",
    "fire.dialogues.progress=false",
    "fire.sft.val_fraction=0.1", "fire.sft.mix_sft=0.25",
    "fire.sft.student.max_steps=4", "fire.sft.student.batch_size=8", "fire.sft.student.progress=false",
    "fire.sft.student.logging_steps=2", "fire.sft.student.max_eval_samples=8",
    "fire.sft.teacher.max_steps=3", "fire.sft.teacher.batch_size=8", "fire.sft.teacher.progress=false",
    "fire.sft.teacher.logging_steps=1", "fire.sft.teacher.max_eval_samples=8",
    "fire.bench.max_dialogues=6", "fire.bench.fixed_items=6", "fire.bench.max_turns=3",
    "fire.bench.student_max_new_tokens=12", "fire.bench.teacher_max_new_tokens=12", "fire.bench.progress=false",
    "fire.bench.teachers=[oracle,trained]",
]


def make_project(root: Path, overrides: list[str]) -> Path:
    """A project root holding params.yaml (the composed config), a generated world and a tiny 'SFT' model."""
    from silkfire.models.testing import TEST_MODEL, make_test_model
    from silkfire.world import WorldConfig, generate_world

    cfg = compose(overrides, PROJECT_ROOT)
    OmegaConf.save(cfg, root / "params.yaml")
    (root / "dvc.yaml").write_text("stages: {}\n")
    shutil.copytree(PROJECT_ROOT / "conf", root / "conf")
    generate_world(WorldConfig.from_mapping(cfg.world), root / cfg.paths.world, seed=int(cfg.seed), progress=False)
    text = {**TEST_MODEL["text"], "max_position_embeddings": 2048}
    make_test_model(root / cfg.paths.sft / "model", text=text)
    return root


@pytest.fixture()
def project(mlflow_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SILKFIRE_ROOT", str(mlflow_root))
    return make_project(mlflow_root, TINY)


@pytest.mark.slow  # ~70 s of CPU (about 8 min wall on a shared, loaded 2-core machine)
def test_fire_branch_stages_end_to_end(project: Path) -> None:
    from mlflow import MlflowClient

    from silkfire.fire.records import read_dialogues
    from silkfire.stages.runner import run_stage

    run_stage("validate", project)  # the world gate: fire_student mixes world records and checks its verdict
    dialogues = run_stage("dialogues", project)
    for split, count in (("train", 40), ("test", 12), ("val", 6)):
        path = project / "data" / "fire" / "dialogues" / f"{split}.jsonl"
        records, rejected = read_dialogues(path)
        assert not rejected and len(records) == dialogues[split]["dialogues"] == count
        assert {d.split for d in records} == {split}
        assert all(d.extra.get("family") in ("open", "probe") for d in records)
    test_images = {d.image for d in read_dialogues(project / "data/fire/dialogues/test.jsonl")[0]}
    assert all(image.startswith("images/test-") for image in test_images)  # held-out scenes only
    val_images = {d.image for d in read_dialogues(project / "data/fire/dialogues/val.jsonl")[0]}
    assert all(image.startswith("images/val-") for image in val_images)  # val scenes only
    assert dialogues["train"]["RR"] > 0  # the scripted students do refine

    gate = run_stage("validate_dialogues", project)
    assert gate["train"]["success"] and gate["test"]["success"] and gate["val"]["success"]
    assert (project / "reports" / "validate_dialogues" / "report.md").is_file()

    trained = {role: run_stage(f"fire_{role}", project) for role in ("student", "teacher")}
    sets = project / "data" / "fire" / "sft"
    students = [json.loads(line) for line in (sets / "student" / "train.jsonl").read_text().splitlines()]
    mixed = [s for s in students if "turns" not in s]
    assert mixed and all(s["family"] == "mme" for s in mixed)
    dialogue_samples = [s for s in students if "turns" in s]
    assert all(len(s["train_turns"]) == len(s["turns"]) and any(s["train_turns"]) for s in dialogue_samples)
    assert trained["teacher"]["sets"]["train_samples"] > 0 and trained["student"]["sets"]["mixed_sft"] == len(mixed)
    for role, folder in (("student", "fire_student"), ("teacher", "fire_teacher")):
        assert (project / "models" / folder / "model" / "model.safetensors").is_file()
        assert (project / "metrics" / "curves" / f"fire_{role}.csv").is_file()
        assert trained[role]["global_step"] == (4 if role == "student" else 3)
    client = MlflowClient()
    registered = run_stage("register_fire", project)["registered"]  # registration is its own stage
    for name in ("silkfire-fire-student", "silkfire-fire-teacher"):
        version = client.get_model_version_by_alias(name, "candidate")
        assert registered[name.rsplit("-", 1)[1]] == f"{name}/{version.version}"
        run = client.get_run(version.run_id)
        assert version.run_id == trained[name.rsplit("-", 1)[1]]["mlflow_run_id"]  # the role's stage run
        assert client.get_metric_history(version.run_id, "train/loss"), "no training curve in MLflow"

    bench = run_stage("fire_bench", project)
    for teacher in ("oracle", "trained"):
        table = bench["free"][teacher]
        assert set(table) == {"sft", "fire"}
        assert table["sft"]["AT_norm"] == pytest.approx(1.0)
        for metrics in table.values():
            assert metrics["dialogues"] == 6 and 1 <= metrics["AT"] <= 3
            assert {"ADR", "ATR", "RR", "accuracy_first", "accuracy_final"} <= set(metrics)
    assert set(bench["fixed"]["student"]) == {"sft", "fire"}
    assert set(bench["fixed"]["teacher"]) == {"sft", "teacher"}
    assert all("MAE" in m for m in bench["fixed"]["teacher"].values())
    report = project / "reports" / "fire_bench"
    text = (report / "fire_bench.md").read_text()
    assert "Free dialogue (teacher: oracle)" in text and "score MAE" in text
    assert (report / "free_oracle_fire.jsonl").is_file()
    assert json.loads((project / "metrics" / "fire_bench.json").read_text())["free"]["oracle"]["fire"]["dialogues"] == 6
    artifacts = {a.path for a in client.list_artifacts(bench["mlflow_run_id"], "fire_bench")}
    assert "fire_bench/fire_bench.md" in artifacts
    val = bench["val"]  # the same figures on the val split, its files under val/
    assert val["val_dialogues"] == 6 and set(val["free"]) == {"oracle", "trained"}
    assert val["free"]["oracle"]["fire"]["dialogues"] == 6 and set(val["fixed"]["teacher"]) == {"sft", "teacher"}
    assert (report / "val" / "free_oracle_fire.jsonl").is_file()
    assert "FIRE-Bench (val split)" in (report / "val" / "fire_bench.md").read_text()


def test_branch_lock_outputs_are_part_of_the_lineage(tmp_path: Path) -> None:
    """The run summary and MLflow tags read DVC digests from dvc.lock and pipelines/<branch>/dvc.lock."""
    from silkfire.tracking.lineage import output_digest, stage_digests

    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(
        {"schema": "2.0", "stages": {"sft": {"outs": [{"path": "models/sft", "md5": "a.dir"}]}}}))
    branch = tmp_path / "pipelines" / "fire"
    branch.mkdir(parents=True)
    (branch / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"fire_teacher": {"outs": [
        {"path": "data/fire/sft/teacher", "md5": "b.dir"}, {"path": "models/fire_teacher", "md5": "c.dir"}]}}}))
    assert stage_digests(tmp_path, "sft") == {"models/sft": "a.dir"}
    assert stage_digests(tmp_path, "fire_teacher") == {"data/fire/sft/teacher": "b.dir", "models/fire_teacher": "c.dir"}
    assert output_digest(tmp_path, "models/fire_teacher/") == "c.dir"
