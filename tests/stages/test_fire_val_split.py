"""FIRE-Bench's validation split (issue 14): the dialogues stage writes val dialogues from the world's val scenes
only, the FIRE gate checks them like the test ones, and fire_bench evaluates val beside test (same code, own
folder) -- or says there is none (published FIRE without a val file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from silkfire.config import compose
from silkfire.io import read_records
from silkfire.stages.runner import run_stage

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["world.train_scenes=4", "world.val_scenes=3", "world.test_scenes=2", "fire.dialogues.train_questions=6",
         "fire.dialogues.test_questions=4", "fire.dialogues.val_questions=5", "fire.dialogues.progress=false",
         "quality.data_docs=false"]


def world_project(root: Path, overrides: list[str]) -> Path:
    """params.yaml and a generated world: all the dialogues stage and its gate need."""
    from silkfire.world import WorldConfig, generate_world

    cfg = compose(overrides, ROOT)
    OmegaConf.save(cfg, root / "params.yaml")
    generate_world(WorldConfig.from_mapping(cfg.world), root / cfg.paths.world, seed=int(cfg.seed), progress=False)
    return root


def test_val_dialogues_come_from_val_scenes_and_pass_the_gate(mlflow_root: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from silkfire.fire.records import read_dialogues
    from silkfire.stages.validate_dialogues import dialogue_file, gated_dialogues

    monkeypatch.setenv("SILKFIRE_ROOT", str(mlflow_root))
    root = world_project(mlflow_root, SMALL)
    split_of = {scene["image"]: scene["split"] for scene in read_records(root / "data/world/scenes.jsonl")}
    metrics = run_stage("dialogues", root)
    assert metrics["val"]["dialogues"] == 5  # capped by fire.dialogues.val_questions
    val, rejected = read_dialogues(root / "data/fire/dialogues/val.jsonl")
    assert not rejected and len(val) == 5
    assert {d.split for d in val} == {"val"}
    assert {split_of[d.image] for d in val} == {"val"}  # no train or test scene
    assert {d.extra["family"] for d in val} <= {"open", "probe"}  # never the MME pairs val.jsonl also holds
    world_ids = {r["id"] for r in read_records(root / "data/world/val.jsonl")}
    assert {d.extra["id"] for d in val} <= world_ids
    for split in ("train", "test"):  # the other splits still come from their own scenes
        assert {split_of[d.image] for d in read_dialogues(root / f"data/fire/dialogues/{split}.jsonl")[0]} == {split}

    gate = run_stage("validate_dialogues", root)
    assert gate["val"]["success"] and gate["val"]["rows"] == 5
    assert (root / "reports/validate_dialogues/val").is_dir()
    cfg = OmegaConf.load(root / "params.yaml")
    assert gated_dialogues(cfg, root, "val") == dialogue_file(cfg, root, "val")  # nothing filtered: the file itself


def bench_project(root: Path) -> Path:
    """params.yaml, a world's scenes.jsonl and the three model folders fire_bench checks for (config.json only:
    the evaluation itself is replaced in these tests)."""
    cfg = compose(["fire.bench.progress=false"], ROOT)
    OmegaConf.save(cfg, root / "params.yaml")
    (root / cfg.paths.world).mkdir(parents=True)
    (root / cfg.paths.world / "scenes.jsonl").write_text("")
    for folder in (f"{cfg.paths.sft}/model", f"{cfg.paths.fire_student}/model", f"{cfg.paths.fire_teacher}/model"):
        (root / folder).mkdir(parents=True)
        (root / folder / "config.json").write_text("{}")
    dialogues = root / cfg.paths.fire / "dialogues"
    dialogues.mkdir(parents=True)
    for split in ("test", "val"):
        (dialogues / f"{split}.jsonl").write_text("")
    return root


def fake_evaluate(calls: list[tuple[str, Path, Path]]):  # noqa: ANN201 -- returns the stand-in function
    """A stand-in for fire_bench.evaluate_split: records its call, returns a split's metrics structure."""
    def evaluate(setup, split: str, path: Path, out: Path) -> dict:  # noqa: ANN001
        calls.append((split, path, out))
        out.mkdir(parents=True, exist_ok=True)
        free = {"sft": {"AT_norm": 1.0, "RR": 0.1, "ADR": 0.1},
                "fire": {"AT_norm": 0.5 if split == "test" else 0.7, "RR": 0.2, "ADR": 0.2}}
        return {f"{split}_dialogues": 1, "fixed": {"student": {}, "teacher": {}}, "free": {"oracle": free}}
    return evaluate


def test_fire_bench_evaluates_test_then_val_each_in_its_own_folder(mlflow_root: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from silkfire.stages import fire_bench

    monkeypatch.setenv("SILKFIRE_ROOT", str(mlflow_root))
    root = bench_project(mlflow_root)
    calls: list[tuple[str, Path, Path]] = []
    monkeypatch.setattr(fire_bench, "evaluate_split", fake_evaluate(calls))
    metrics = run_stage("fire_bench", root)
    out = root / "reports/fire_bench"
    assert [(split, path.name, folder) for split, path, folder in calls] == [
        ("test", "test.jsonl", out), ("val", "val.jsonl", out / "val")]
    assert metrics["test_dialogues"] == 1 and metrics["free"]["oracle"]["fire"]["AT_norm"] == 0.5  # test: top level
    assert metrics["val"]["free"]["oracle"]["fire"]["AT_norm"] == 0.7
    saved = json.loads((root / "metrics/fire_bench.json").read_text())
    assert saved["val"]["val_dialogues"] == 1 and saved["fixed"] == metrics["fixed"]
    assert "| val: RR" in fire_bench.summary(metrics)


def test_fire_bench_without_val_dialogues_reports_val_as_null(mlflow_root: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from silkfire.stages import fire_bench

    monkeypatch.setenv("SILKFIRE_ROOT", str(mlflow_root))
    root = bench_project(mlflow_root)
    (root / "data/fire/dialogues/val.jsonl").unlink()  # published FIRE: no val split
    stale = root / "reports/fire_bench/val"
    stale.mkdir(parents=True)
    (stale / "free_oracle_fire.jsonl").write_text("")
    calls: list[tuple[str, Path, Path]] = []
    monkeypatch.setattr(fire_bench, "evaluate_split", fake_evaluate(calls))
    metrics = run_stage("fire_bench", root)
    assert [split for split, _, _ in calls] == ["test"]
    assert metrics["val"] is None and json.loads((root / "metrics/fire_bench.json").read_text())["val"] is None
    assert not stale.exists()  # an earlier run's val files do not pass for this one's
    assert "val" not in fire_bench.summary(metrics)
