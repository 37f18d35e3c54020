"""DPO through `accelerate launch`: 2 CPU processes (gloo, DDP) follow the loss curve of 1 process at the same
global batch, the sharded reference pass gives the same log-probs, a relaunch resumes exactly, and every
accelerate config of the project parses in accelerate's launcher for the DPO entry point."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from silkfire.train import launch_dpo

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ACCELERATE_DIR = PROJECT_ROOT / "accelerate"
# Constant LR, LoRA without dropout (each process has its own RNG stream: dropout masks would differ), the NLL term
# on (its denominator is the global micro-batch's token count), 2 micro-batches per step, 2 epochs of ~38 pairs at 16
# a step: the last chunk of each epoch is short, so a process gets an empty micro-batch and runs one weighted 0.
OVERRIDES = [
    "silkie.dpo.max_steps=6", "silkie.dpo.logging_steps=1", "silkie.dpo.warmup_ratio=0",
    "silkie.dpo.lr_scheduler=constant", "silkie.dpo.learning_rate=2e-3", "silkie.dpo.num_threads=1",
    "silkie.dpo.progress=false", "silkie.dpo.save_steps=3", "silkie.dpo.eval_fraction=0.2",
    "silkie.dpo.ref_batch_size=8", "silkie.dpo.lora.dropout=0.0", "silkie.dpo.grad_accum=2",
    "silkie.dpo.rpo_alpha=1.0", "runtime.device=cpu",
]
COMPARED = ("loss", "dpo_loss", "nll", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward",
            "chosen_logp", "rejected_logp", "eval_loss", "eval_reward_accuracy", "eval_reward_margin")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project root (conf/ + dvc.yaml) with a tiny world, a test model as the SFT model and 48 pairs."""
    from silkfire.io import write_jsonl
    from silkfire.models.testing import make_test_model, make_test_world
    from silkfire.policies.instructions import world_instructions
    from silkfire.policies.scripted import ScriptedPolicy
    from silkfire.world.config import WorldConfig

    root = tmp_path_factory.mktemp("launch-dpo-project")
    shutil.copytree(PROJECT_ROOT / "conf", root / "conf")
    shutil.copyfile(PROJECT_ROOT / "dvc.yaml", root / "dvc.yaml")
    world = make_test_world(root / "data" / "world", train_scenes=3, val_scenes=1, test_scenes=1)
    make_test_model(root / "models" / "sft" / "model")
    instructions = world_instructions(world, families=["open", "probe", "mme"])
    good = ScriptedPolicy("correct", WorldConfig()).respond(instructions, world, 0)
    pairs = []
    for profile in ("hallucinate", "miscount", "wrong_color"):
        bad = ScriptedPolicy(profile, WorldConfig()).respond(instructions, world, 0)
        pairs += [{"id": f"{ins.id}/{profile}", "source_id": ins.id, "prompt": ins.prompt, "img_path": ins.image,
                   "chosen": chosen, "rejected": rejected}
                  for ins, chosen, rejected in zip(instructions, good, bad) if chosen != rejected]
    write_jsonl(root / "data" / "feedback" / "pairs.jsonl", pairs)
    return root


def _launch(project: Path, out: str, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "SILKFIRE_ROOT": str(project), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_DIR / "cpu_2proc.yaml"),
         "-m", "silkfire.train.launch_dpo", *OVERRIDES, *extra, "--out", str(project / out)],
        cwd=project, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done, time.perf_counter() - started


def _history(out: Path) -> list[dict[str, str]]:
    with (out / "history.csv").open() as handle:
        return list(csv.DictReader(handle))


def _column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(row[key]) for row in rows if row[key]]


def test_two_processes_follow_the_dpo_loss_curve_of_one_and_resume_exactly(project: Path) -> None:
    from safetensors.torch import load_file

    two, two_seconds = _launch(project, "out2", "silkie.dpo.batch_size=4")
    summary = json.loads(two.stdout.strip().splitlines()[-1])  # only rank 0 prints it
    assert summary["num_processes"] == 2 and summary["global_batch_size"] == 16
    assert summary["device"] == "ddp x 2 (cpu)"

    started = time.perf_counter()
    one = launch_dpo.run([*OVERRIDES, "silkie.dpo.batch_size=8"], out=project / "out1", root=project)
    one_seconds = time.perf_counter() - started
    assert one["num_processes"] == 1 and one["global_batch_size"] == 16

    # the sharded reference pass (batches alternating between the processes) gives every pair's log-probs
    ref_one = load_file(project / "out1" / "reference_logps.safetensors")
    ref_two = load_file(project / "out2" / "reference_logps.safetensors")
    for side in ("chosen", "rejected"):
        assert (ref_one[side] - ref_two[side]).abs().max().item() <= 1e-5

    curve_one, curve_two = _history(project / "out1"), _history(project / "out2")
    assert [row["step"] for row in curve_one] == [row["step"] for row in curve_two] == [str(s) for s in range(1, 7)]
    assert _column(curve_one, "epoch") == _column(curve_two, "epoch")
    differences = {key: max(abs(a - b) for a, b in zip(_column(curve_one, key), _column(curve_two, key)))
                   for key in COMPARED}
    print(f"\n1 process x 8 x 2 micro: {one_seconds:.1f} s; 2 processes x 4 x 2 micro: {two_seconds:.1f} s (launch "
          f"included); largest |difference| per column: " + ", ".join(f"{k} {v:.2e}" for k, v in differences.items()))
    for row_one, row_two in zip(curve_one, curve_two):
        print(f"step {row_one['step']}: loss {row_one['loss']} vs {row_two['loss']}")
    # the loss curve within 1e-5; the log-probs (sums over ~10-60 tokens, |value| up to ~60) to the same relative
    for key, difference in differences.items():
        scale = 1.0 if key in ("loss", "dpo_loss", "nll") else 1 + max(abs(v) for v in _column(curve_one, key))
        assert difference < 1e-5 * scale, key
    assert _column(curve_two, "grad_norm") == pytest.approx(_column(curve_one, "grad_norm"), rel=1e-4)
    losses = _column(curve_one, "loss")
    assert losses[-1] < losses[0]  # it trained: a curve worth comparing

    weights_one = load_file(project / "out1" / "model" / "model.safetensors")
    weights_two = load_file(project / "out2" / "model" / "model.safetensors")
    assert weights_one.keys() == weights_two.keys()
    for name, tensor in weights_one.items():
        assert (tensor - weights_two[name]).abs().max().item() <= 1e-5 * (1 + tensor.abs().max().item()), name

    # checkpoints and resume as in one process: launched again, the job continues from checkpoint-3 (DDP wrote the
    # one-process format, with both processes' RNG states) and ends on the very same weights and curve
    assert sorted(p.name for p in (project / "out2" / "checkpoints").iterdir()) == ["checkpoint-3", "fingerprint.json"]
    again, _ = _launch(project, "out2", "silkie.dpo.batch_size=4")
    assert "resumed from" in again.stderr + again.stdout
    metrics = json.loads((project / "out2" / "metrics.json").read_text())
    assert (metrics["resumed_from_step"], metrics["steps_run"]) == (3, 3)
    assert _history(project / "out2") == curve_two
    resumed = load_file(project / "out2" / "model" / "model.safetensors")
    assert all(bool((resumed[name] == tensor).all()) for name, tensor in weights_two.items())


def test_missing_pairs_name_the_stage_to_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(PROJECT_ROOT / "conf", tmp_path / "conf")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    assert launch_dpo.main(["--root", str(tmp_path), "silkie.dpo.max_steps=1"]) == 2
    error = capsys.readouterr().err
    assert "data/feedback/pairs.jsonl" in error and "pipelines/silkie/dvc.yaml:pairs" in error


def test_a_launch_whose_mixed_precision_disagrees_with_runtime_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from silkfire.runtime import Runtime, RuntimeConfigError
    from silkfire.train.dpo import _Job

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(RuntimeConfigError, match="mixed_precision=bf16 but .*float32.*runtime.dtype=bfloat16"):
        _Job.from_env(Runtime("cpu", "float32"))


@pytest.mark.parametrize("name", ["cpu_2proc.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "fsdp.yaml"])
def test_every_accelerate_config_parses_for_the_dpo_entry_point(name: str) -> None:
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parsed = launch_command_parser().parse_args(["--config_file", str(ACCELERATE_DIR / name), "-m",
                                                 "silkfire.train.launch_dpo", "silkie.dpo.batch_size=2"])
    args, defaults, _ = _validate_launch_command(parsed)
    assert args.module and args.training_script == "silkfire.train.launch_dpo"
    assert args.training_script_args == ["silkie.dpo.batch_size=2"]
    kind = {"cpu_2proc.yaml": "multi_gpu", "deepspeed_zero2.yaml": "use_deepspeed",
            "deepspeed_zero3.yaml": "use_deepspeed", "fsdp.yaml": "use_fsdp"}[name]
    assert getattr(args, kind)
    # the launch's mixed precision is what runtime.dtype resolves to where the config runs (_Job checks it)
    assert defaults.mixed_precision == ("no" if name == "cpu_2proc.yaml" else "bf16")
