"""Resume by default (silkfire.train.resume): a run killed at a checkpoint and started again with no flag continues
its own checkpoints and ends with the uninterrupted run's weights; other settings, data, start model or code start
over (saying why); the decision reaches MLflow; the DVC outputs that hold checkpoints are `persist`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from silkfire.io import read_records, write_jsonl
from silkfire.models.testing import make_test_model, make_test_world
from silkfire.train import resume
from silkfire.train.dpo import DPOConfig, TrainingStopped, checkpoint_dirs, train_dpo
from silkfire.train.sft import SFTConfig, train_sft

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Killed(RuntimeError):
    pass


def kill_after_checkpoint(step: int):  # noqa: ANN201 -- a silkfire.train.callbacks callback
    """A training callback that dies right after checkpoint-<step> is written (as a kill -9 there would)."""

    def callback(event: str, at: int, values: dict) -> None:
        if event == "save" and at == step:
            raise Killed(f"killed after checkpoint-{step}")

    return callback


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_world(tmp_path_factory.mktemp("world"), train_scenes=3, val_scenes=1, test_scenes=1)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_model(tmp_path_factory.mktemp("base") / "model")


def sft_config(**overrides) -> SFTConfig:
    values = dict(learning_rate=3e-3, max_steps=8, batch_size=4, warmup_ratio=0.25, logging_steps=1, save_steps=2,
                  save_total_limit=2, eval_steps=0, eval_batch_size=16, max_eval_samples=8, num_threads=2,
                  families=["mme"], max_samples=24, progress=False, lr_scheduler="cosine")
    values.update(overrides)
    return SFTConfig.from_mapping(values)


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def identical(a: Path, b: Path) -> bool:
    first, second = weights(a), weights(b)
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def sft(world: Path, base: Path, out: Path, config: SFTConfig, train: Path | None = None, **kwargs):
    return train_sft(base, train or world / "train.jsonl", world / "val.jsonl", world, config, out, **kwargs)


@pytest.fixture(scope="module")
def straight(world: Path, base: Path, tmp_path_factory: pytest.TempPathFactory):
    """The uninterrupted SFT run every resumed one must reproduce."""
    return sft(world, base, tmp_path_factory.mktemp("straight") / "sft", sft_config())


def killed_run(world: Path, base: Path, out: Path, at: int = 4, **overrides) -> None:
    with pytest.raises(Killed):
        sft(world, base, out, sft_config(**overrides), callbacks=[kill_after_checkpoint(at)])
    assert [p.name for p in resume.complete_checkpoints(out / "checkpoints")] == [f"checkpoint-{at - 2}",
                                                                                   f"checkpoint-{at}"]


def test_sft_killed_at_a_checkpoint_resumes_with_no_flag_to_the_same_weights(
        world: Path, base: Path, straight, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sft"
    killed_run(world, base, out, at=4)
    capsys.readouterr()
    # again, no flag (progress may change on a resumed run)
    again = sft(world, base, out, sft_config(progress=True))
    assert f"resumed from {out / 'checkpoints' / 'checkpoint-4'} (step 4)" in capsys.readouterr().out
    assert again.metrics["resumed_from_step"] == 4 and again.metrics["steps_run"] == 4
    assert straight.metrics["resumed_from_step"] == 0 and straight.metrics["steps_run"] == 8
    assert again.metrics["global_step"] == straight.metrics["global_step"] == 8
    assert identical(straight.model_dir, again.model_dir)  # bit-identical, not just close
    assert [row["loss"] for row in again.history if "loss" in row] == \
        [row["loss"] for row in straight.history if "loss" in row]  # the steps before the kill included
    assert again.metrics["eval_loss"] == straight.metrics["eval_loss"]
    # the final output still holds the step checkpoints (the silkie pool samples from them)
    assert [p.name for p in resume.complete_checkpoints(out / "checkpoints")] == ["checkpoint-6", "checkpoint-8"]

    # another thread count resumes too; the float sums then add up in another order (measured: 34 of 47 tensors
    # differ, by at most ~1.5e-8), so the weights are equal within float tolerance only
    killed_run(world, base, tmp_path / "threads", at=4)
    threads = sft(world, base, tmp_path / "threads", sft_config(num_threads=1))
    assert threads.metrics["resumed_from_step"] == 4 and threads.metrics["steps_run"] == 4
    ours, theirs = weights(straight.model_dir), weights(threads.model_dir)
    assert all(torch.allclose(ours[key], theirs[key], rtol=0, atol=1e-6) for key in ours)


@pytest.mark.parametrize("change, expected", [
    ("learning_rate", "learning_rate 0.003 -> 0.002"),
    ("data", "train_data changed"),
    ("base", "base_model changed"),
])
def test_sft_other_settings_data_or_model_start_over_saying_why(
        world: Path, base: Path, change: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sft"
    killed_run(world, base, out, at=4)
    before = json.loads((out / "checkpoints" / resume.STATE_FILE).read_text())
    overrides, train, start = {}, None, base
    if change == "learning_rate":
        overrides = {"learning_rate": 2e-3}
    elif change == "data":
        # every yes/no answer flipped (what counts is the encoded data the run trains on: a changed record that
        # the max_samples draw leaves out changes nothing)
        records = [{**r, "answer": {"Yes": "No", "No": "Yes"}.get(r["answer"], r["answer"])}
                   for r in read_records(world / "train.jsonl")]
        train = tmp_path / "train.jsonl"
        write_jsonl(train, records)
    else:
        from safetensors.torch import save_file

        start = tmp_path / "other_base"
        shutil.copytree(base, start)
        other = weights(base)
        name = next(iter(other))
        other[name] = other[name] + 1e-3
        save_file(other, str(start / "model.safetensors"), metadata={"format": "pt"})
    capsys.readouterr()
    again = sft(world, start, out, sft_config(**overrides), train=train)
    printed = capsys.readouterr().out
    assert "restarted at step 0: checkpoints up to step 4 were trained on other settings/inputs" in printed
    assert expected in printed
    assert again.metrics["resumed_from_step"] == 0 and again.metrics["steps_run"] == 8
    after = json.loads((out / "checkpoints" / resume.STATE_FILE).read_text())
    assert after["digest"] != before["digest"]  # the new run's checkpoints carry the new fingerprint


def test_changed_training_code_starts_over(tmp_path: Path) -> None:
    current = resume.fingerprint({"learning_rate": 1e-3, "num_threads": 2}, {"train_data": "a"})
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "checkpoint-3").mkdir(parents=True)
    (checkpoints / "checkpoint-3" / "trainer_state.json").write_text("{}")
    found = resume.complete_checkpoints(checkpoints)
    resume.prepare(checkpoints, resume.decide(checkpoints, current, "auto", []), current)
    assert resume.decide(checkpoints, current, "auto", found).resumed
    # threads / progress / resume are not part of it
    same = resume.fingerprint({"learning_rate": 1e-3, "num_threads": 8, "progress": False}, {"train_data": "a"})
    assert same["digest"] == current["digest"]
    other_code = {**current, "digest": "x", "inputs": {**current["inputs"], "code": "y"}}
    decision = resume.decide(checkpoints, other_code, "auto", found)
    assert decision.action == "restarted" and "code changed" in decision.reason
    assert resume.decide(checkpoints, current, "false", found).action == "restarted"
    assert resume.decide(checkpoints, current, "auto", []).action == "fresh"


def test_sft_resume_false_starts_over_and_true_refuses_other_settings(world: Path, base: Path, straight,
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "sft"
    killed_run(world, base, out, at=4)
    with pytest.raises(ValueError, match=r"cannot resume from .*checkpoint-4.*max_steps 8 -> 10"):
        sft(world, base, out, sft_config(max_steps=10, resume=True))
    over = sft(world, base, out, sft_config(resume=False))
    assert over.metrics["resumed_from_step"] == 0 and over.metrics["steps_run"] == 8
    assert identical(straight.model_dir, over.model_dir)
    # a finished run with the same fingerprint continues from its last checkpoint: nothing left to train
    done = sft(world, base, out, sft_config())
    assert done.metrics["resumed_from_step"] == 8 and done.metrics["steps_run"] == 0
    assert identical(straight.model_dir, done.model_dir)


def test_checkpoints_without_a_fingerprint_are_not_continued_unless_asked(world: Path, base: Path, straight,
                                                                          tmp_path: Path) -> None:
    out = tmp_path / "sft"
    killed_run(world, base, out, at=4)
    (out / "checkpoints" / resume.STATE_FILE).unlink()  # as an older silkfire left them
    shutil.copytree(out, tmp_path / "copy")
    auto = sft(world, base, out, sft_config())
    assert auto.metrics["resumed_from_step"] == 0 and identical(straight.model_dir, auto.model_dir)
    forced = sft(world, base, tmp_path / "copy", sft_config(resume="true"))
    assert forced.metrics["resumed_from_step"] == 4 and identical(straight.model_dir, forced.model_dir)


def test_a_checkpoint_cut_short_is_skipped(world: Path, base: Path, straight, tmp_path: Path) -> None:
    out = tmp_path / "sft"
    killed_run(world, base, out, at=4)
    shutil.copytree(out / "checkpoints" / "checkpoint-4", out / "checkpoints" / "checkpoint-6")
    (out / "checkpoints" / "checkpoint-6" / "trainer_state.json").write_text('{"global_ste')  # killed mid-save
    again = sft(world, base, out, sft_config())
    assert again.metrics["resumed_from_step"] == 4 and identical(straight.model_dir, again.model_dir)


def test_resume_modes_and_the_decision_in_mlflow(mlflow_root: Path) -> None:
    import mlflow

    assert [resume.resume_mode(v) for v in (True, False, "auto", "TRUE", "false")] == \
        ["true", "false", "auto", "true", "false"]
    with pytest.raises(ValueError, match="resume must be one of"):
        SFTConfig.from_mapping({"resume": "sometimes"})
    assert SFTConfig().resume == "auto" and DPOConfig().resume == "auto"
    decision = resume.ResumeDecision("resumed", "", mlflow_root / "checkpoint-4", 4, "abc")
    from silkfire.tracking.store import configure

    configure(mlflow_root, "silkfire")  # this store's experiment (an earlier test may have left another active)
    with mlflow.start_run() as run:
        resume.record(decision, "sft")
    tags = mlflow.MlflowClient().get_run(run.info.run_id).data.tags
    assert tags["silkfire.resume"] == "resumed" and tags["silkfire.resumed_from"] == "4"
    assert tags["silkfire.fingerprint"] == "abc"


def test_the_conf_files_default_to_auto() -> None:
    from omegaconf import OmegaConf

    assert OmegaConf.load(PROJECT_ROOT / "conf" / "train" / "sft.yaml").resume == "auto"
    assert OmegaConf.load(PROJECT_ROOT / "conf" / "silkie" / "default.yaml").dpo.resume == "auto"
    fire = OmegaConf.load(PROJECT_ROOT / "conf" / "fire" / "default.yaml")
    assert fire.sft.student.resume == fire.sft.teacher.resume == "auto"


def test_the_outputs_holding_checkpoints_survive_dvc_repro() -> None:
    """DVC deletes a stage's outputs before running it unless they are `persist`: the checkpoints must stay."""
    def outs(path: str, stage: str) -> dict[str, dict]:
        entries = yaml.safe_load((PROJECT_ROOT / path).read_text())["stages"][stage]["outs"]
        return {next(iter(e)) if isinstance(e, dict) else e: (next(iter(e.values())) if isinstance(e, dict) else {})
                for e in entries}

    assert outs("dvc.yaml", "sft")["${paths.sft}"].get("persist") is True
    assert outs("pipelines/silkie/dvc.yaml", "dpo")["${paths.dpo}"].get("persist") is True
    for role in ("student", "teacher"):
        assert outs("pipelines/fire/dvc.yaml", f"fire_{role}")["${paths.fire_%s}" % role].get("persist") is True


# ---- DPO ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pairs_file(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from silkfire.policies.instructions import world_instructions
    from silkfire.policies.scripted import ScriptedPolicy
    from silkfire.world.config import WorldConfig

    instructions = world_instructions(world, families=["open", "probe"])
    good = ScriptedPolicy("correct", WorldConfig()).respond(instructions, world, 0)
    bad = ScriptedPolicy("hallucinate", WorldConfig()).respond(instructions, world, 0)
    pairs = [{"id": i.id, "source_id": i.id, "prompt": i.prompt, "img_path": i.image, "chosen": c, "rejected": r}
             for i, c, r in zip(instructions, good, bad) if c != r]
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    write_jsonl(path, pairs[:32])
    return path


def dpo_config(**overrides) -> DPOConfig:
    values = dict(rpo_alpha=0.5, learning_rate=2e-3, max_steps=6, batch_size=4, warmup_ratio=0.2, logging_steps=1,
                  save_steps=2, save_total_limit=2, eval_fraction=0.2, ref_batch_size=16, num_threads=1,
                  progress=False)
    values.update(overrides)
    return DPOConfig.from_mapping(values)


def test_dpo_killed_at_a_checkpoint_resumes_with_no_flag(world: Path, base: Path, pairs_file: Path,
                                                         tmp_path: Path) -> None:
    full = train_dpo(base, pairs_file, world, dpo_config(), tmp_path / "full")

    def kill_after_checkpoint_4(event: str, step: int, values: dict) -> None:
        if event == "step" and step == 4:  # checkpoint-4 is written before the "step" event
            raise TrainingStopped("killed")

    out = tmp_path / "dpo"
    with pytest.raises(TrainingStopped):
        train_dpo(base, pairs_file, world, dpo_config(), out, callbacks=[kill_after_checkpoint_4])
    assert [p.name for p in checkpoint_dirs(out / "checkpoints")] == ["checkpoint-2", "checkpoint-4"]
    again = train_dpo(base, pairs_file, world, dpo_config(progress=True), out)
    assert again.metrics["resumed_from_step"] == 4 and again.metrics["steps_run"] == 2
    assert full.metrics["steps_run"] == 6
    assert again.history == full.history
    assert identical(full.model_dir, again.model_dir)

    # other settings: never continued silently -- auto starts over, true refuses
    out = tmp_path / "dpo2"
    with pytest.raises(TrainingStopped):
        train_dpo(base, pairs_file, world, dpo_config(), out, callbacks=[kill_after_checkpoint_4])
    with pytest.raises(ValueError, match=r"cannot resume .*beta 0.1 -> 0.2"):
        train_dpo(base, pairs_file, world, dpo_config(beta=0.2, resume=True), out)
    other = train_dpo(base, pairs_file, world, dpo_config(beta=0.2), out)
    assert other.metrics["resumed_from_step"] == 0 and other.metrics["steps_run"] == 6
    assert not identical(full.model_dir, other.model_dir)
