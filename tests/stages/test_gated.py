"""A training stage never trains on data whose gate did not pass, however it is run: `sft`, `dpo`, `fire_student` and
`fire_teacher` refuse (GateNotPassed, before loading anything) when their gate's verdict is missing, failed, or does
not vouch for the exact bytes they would read; under policy filter they read the clean copy the verdict vouches for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from silkfire.config import compose
from silkfire.io import read_records, write_jsonl
from silkfire.models.testing import make_test_world
from silkfire.quality.verdict import VERDICT, GateNotPassed, require_passed
from silkfire.stages.runner import run_stage

ROOT = Path(__file__).resolve().parents[2]
TINY = ["experiment=smoke", "world.train_scenes=3", "world.val_scenes=1", "world.test_scenes=1",
        "quality.data_docs=false", "tracking.log_model=false"]


@pytest.fixture()
def project(mlflow_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SILKFIRE_ROOT", str(mlflow_root))
    cfg = compose(TINY, ROOT)
    OmegaConf.save(cfg, mlflow_root / "params.yaml")
    make_test_world(mlflow_root / cfg.paths.world, train_scenes=3, val_scenes=1, test_scenes=1)
    return mlflow_root


def params(root: Path):  # noqa: ANN201 -- a DictConfig
    return OmegaConf.load(root / "params.yaml")


def test_sft_refuses_until_the_world_gate_passed_on_the_bytes_it_reads(project: Path) -> None:
    from silkfire.quality import GateFailed

    refusal = r"(?s)sft: refusing.*no verdict of the validate gate.*silkfire stage validate"
    with pytest.raises(GateNotPassed, match=refusal):
        run_stage("sft", project)  # refused before any model is loaded (there is none here)

    run_stage("validate", project)
    verdict = json.loads((project / "reports/validate" / VERDICT).read_text())
    assert verdict["success"] is True and verdict["policy"] == "fail"
    assert {"data/world/train.jsonl", "data/world/val.jsonl"} <= set(verdict["files"])
    require_passed(params(project), project, "sft")

    train = project / "data/world/train.jsonl"
    records = read_records(train)
    records[0]["answer"] = ""  # blank: the world gate's text check fails on it
    write_jsonl(train, records)
    with pytest.raises(GateNotPassed, match=r"train\.jsonl changed after the validate gate checked it"):
        require_passed(params(project), project, "sft")
    with pytest.raises(GateFailed):
        run_stage("validate", project)
    with pytest.raises(GateNotPassed, match=r"the validate gate failed \(policy fail"):
        run_stage("sft", project)

    cfg = params(project)  # policy filter: the bad row is quarantined, the clean copy is what sft reads
    cfg.quality.world.policy = "filter"
    cfg.quality.max_quarantine_fraction = 0.5
    OmegaConf.save(cfg, project / "params.yaml")
    run_stage("validate", project)
    clean = project / "reports/validate/clean/train.jsonl"
    assert clean.is_file() and len(read_records(clean)) == len(records) - 1
    assert "reports/validate/clean/train.jsonl" in json.loads((project / "reports/validate" / VERDICT).read_text())[
        "files"]
    require_passed(params(project), project, "sft")
    write_jsonl(clean, records)  # the bad row slipped back in by hand
    with pytest.raises(GateNotPassed, match=r"clean/train\.jsonl changed after the validate gate"):
        require_passed(params(project), project, "sft")


def test_dpo_and_the_fire_stages_name_every_gate_they_miss(project: Path) -> None:
    with pytest.raises(GateNotPassed) as refused:
        run_stage("dpo", project)
    assert "validate_feedback gate" in str(refused.value) and "pairs gate" in str(refused.value)
    with pytest.raises(GateNotPassed) as refused:
        run_stage("fire_student", project)
    assert "validate_dialogues gate" in str(refused.value) and "no verdict of the validate gate" in str(refused.value)
    for cfg, stage in ((params(project), "fire_teacher"), (params(project), "fire_student")):
        if stage == "fire_student":
            cfg.fire.sft.mix_sft = 0.0  # no world records mixed in: the world gate is not asked for
        with pytest.raises(GateNotPassed) as refused:  # the teacher never reads world records
            require_passed(cfg, project, stage)
        assert "validate_dialogues gate" in str(refused.value)
        assert "validate gate" not in str(refused.value).replace("validate_dialogues gate", ""), stage


def test_an_unreadable_verdict_is_a_refusal(project: Path) -> None:
    (project / "reports/validate").mkdir(parents=True)
    (project / "reports/validate" / VERDICT).write_text("{not json")
    with pytest.raises(GateNotPassed, match=r"cannot be read"):
        require_passed(params(project), project, "sft")


def test_drift_baselines_are_kept_per_world_config(tmp_path: Path) -> None:
    """A smoke world and the full world each compare with their own last passing version (stage `validate`)."""
    import json

    from silkfire.config import compose
    from silkfire.stages.validate import baseline_profile, remember_profile, world_key

    root = Path(__file__).resolve().parents[2]
    full, smoke = world_key(compose([], root)), world_key(compose(["experiment=smoke"], root))
    assert full != smoke and full == world_key(compose(["seed=3"], root))  # the global seed is not the world's
    profiles = tmp_path / "validate_profile.json"
    assert baseline_profile(profiles, full, tmp_path) is None  # first run: nothing to compare with
    (tmp_path / "full.json").write_text(json.dumps({"metrics": {"a": 1}}))
    (tmp_path / "smoke.json").write_text(json.dumps({"metrics": {"a": 2}}))
    remember_profile(profiles, full, tmp_path / "full.json")
    assert baseline_profile(profiles, smoke, tmp_path) is None  # a smoke run after a full one: its own first version
    remember_profile(profiles, smoke, tmp_path / "smoke.json")
    back = baseline_profile(profiles, full, tmp_path)  # the next full run finds the full world's profile, not smoke's
    assert back is not None and json.loads(back.read_text()) == {"metrics": {"a": 1}}
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({"metrics": {"a": 3}}))  # the one-profile format of earlier versions
    assert baseline_profile(legacy, full, tmp_path) == legacy
