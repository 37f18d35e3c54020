"""Training through `accelerate launch`: 2 CPU processes (gloo) follow the loss curve of 1 process at the same
global batch; the multi-GPU accelerate configs are valid for accelerate 1.15 (parsed by its own launcher)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest

from silkfire.models.testing import make_test_model, make_test_world
from silkfire.train import launch

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ACCELERATE_DIR = PROJECT_ROOT / "accelerate"
# A short constant-LR run, one question per sample, one thread per process (2 processes share 2 cores).
OVERRIDES = [
    "train.max_steps=6", "train.logging_steps=1", "train.warmup_ratio=0", "train.lr_scheduler=constant",
    "train.learning_rate=3e-3", "train.num_threads=1", "train.progress=false", "train.eval_steps=0",
    "train.max_eval_samples=16", "train.save_steps=100", "train.turns_per_sample=2",
]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project root (conf/ + dvc.yaml) whose world and base model are tiny test ones."""
    root = tmp_path_factory.mktemp("launch-project")
    shutil.copytree(PROJECT_ROOT / "conf", root / "conf")
    shutil.copyfile(PROJECT_ROOT / "dvc.yaml", root / "dvc.yaml")
    make_test_world(root / "data" / "world", train_scenes=4, val_scenes=1, test_scenes=1)
    make_test_model(root / "models" / "base")
    return root


def _history(out: Path) -> list[dict[str, str]]:
    with (out / "history.csv").open() as handle:
        return list(csv.DictReader(handle))


def _column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(row[key]) for row in rows if row[key]]


def test_two_processes_follow_the_loss_curve_of_one(project: Path) -> None:
    """2 processes x 4 samples (gloo, DDP) vs 1 process x 8 samples: the same global batches, the same curve.

    Not bitwise: DDP sums two half-batch gradients (all-reduce) where one process sums one batch, and the
    logged loss is the sum of two half-batch partial losses, so float32 rounding differs in the last bits
    (measured: at most ~2e-7 relative). Both sides see the same samples in the same order: accelerate gives
    process k the k-th per-process batch of the seeded sampler, and Trainer divides every process's loss by
    the token count of the whole global batch (average_tokens_across_devices).
    """
    env = {**os.environ, "SILKFIRE_ROOT": str(project), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    two = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_DIR / "cpu_2proc.yaml"),
         "-m", "silkfire.train.launch", *OVERRIDES, "train.batch_size=4", "--out", str(project / "out2")],
        cwd=project, env=env, capture_output=True, text=True, timeout=600,
    )
    two_seconds = time.perf_counter() - started
    assert two.returncode == 0, two.stderr[-4000:]
    summary = json.loads(two.stdout.strip().splitlines()[-1])  # only rank 0 prints it
    assert summary["num_processes"] == 2 and summary["global_batch_size"] == 8

    started = time.perf_counter()
    one = launch.run([*OVERRIDES, "train.batch_size=8"], out=project / "out1", root=project)
    one_seconds = time.perf_counter() - started
    assert one["num_processes"] == 1 and one["global_batch_size"] == 8

    curve_one, curve_two = _history(project / "out1"), _history(project / "out2")
    print(f"\n1 process x 8: {one_seconds:.1f} s, 2 processes x 4: {two_seconds:.1f} s (launch included)")
    for row_one, row_two in zip(curve_one, curve_two):
        print(f"step {row_one['step']}: loss {row_one['loss']} vs {row_two['loss']}")
    assert [row["step"] for row in curve_one] == [row["step"] for row in curve_two] == [str(s) for s in range(1, 7)]
    # the same share of the data per step (epoch fractions) and the same curve
    assert _column(curve_one, "epoch") == _column(curve_two, "epoch")
    assert _column(curve_two, "loss") == pytest.approx(_column(curve_one, "loss"), rel=1e-5)
    assert _column(curve_two, "grad_norm") == pytest.approx(_column(curve_one, "grad_norm"), rel=1e-4)
    assert _column(curve_two, "eval_loss") == pytest.approx(_column(curve_one, "eval_loss"), rel=1e-5)
    losses = _column(curve_one, "loss")
    assert losses[-1] < losses[0]  # it trained: a curve worth comparing

    # the final weights agree too (one model saved, by rank 0)
    from safetensors.torch import load_file

    weights_one = load_file(project / "out1" / "model" / "model.safetensors")
    weights_two = load_file(project / "out2" / "model" / "model.safetensors")
    assert weights_one.keys() == weights_two.keys()
    for name, tensor in weights_one.items():
        assert (tensor - weights_two[name]).abs().max().item() <= 1e-4 * (1 + tensor.abs().max().item()), name
    assert json.loads((project / "out2" / "metrics.json").read_text())["num_processes"] == 2


def test_missing_world_names_the_file_and_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(PROJECT_ROOT / "conf", tmp_path / "conf")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    assert launch.main(["--root", str(tmp_path), "train.max_steps=1"]) == 2
    error = capsys.readouterr().err
    assert "data/world/train.jsonl" in error and "dvc repro validate" in error


def _launch_args(config: Path):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parsed = launch_command_parser().parse_args(["--config_file", str(config), "-m", "silkfire.train.launch"])
    return _validate_launch_command(parsed)


def test_cpu_config_runs_torchrun_with_two_processes() -> None:
    args, defaults, _ = _launch_args(ACCELERATE_DIR / "cpu_2proc.yaml")
    # MULTI_GPU goes through torchrun (MULTI_CPU would need mpirun); the processes train on the CPU
    assert args.multi_gpu and args.num_processes == 2 and defaults.use_cpu
    assert defaults.mixed_precision == "no"


def test_deepspeed_configs_build_the_plugin_accelerate_would() -> None:
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    for name, stage in (("deepspeed_zero2.yaml", 2), ("deepspeed_zero3.yaml", 3)):
        args, defaults, _ = _launch_args(ACCELERATE_DIR / name)
        assert args.use_deepspeed and defaults.mixed_precision == "bf16"
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
        with mock.patch.dict(os.environ, env):
            plugin = DeepSpeedPlugin()
        config = plugin.deepspeed_config
        assert config["zero_optimization"]["stage"] == stage
        # left to Trainer, filled from train.grad_accum / train.max_grad_norm / train.batch_size
        assert config["gradient_accumulation_steps"] == config["gradient_clipping"] == "auto"
        assert config["train_micro_batch_size_per_gpu"] == "auto"
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is (stage == 3)


def test_fsdp_config_wraps_the_layers_of_our_llava(tmp_path: Path) -> None:
    import torch  # noqa: F401 -- FSDP plugin needs torch.distributed
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from torch.distributed.fsdp import StateDictType

    args, defaults, _ = _launch_args(ACCELERATE_DIR / "fsdp.yaml")
    assert args.use_fsdp and defaults.mixed_precision == "bf16"
    with mock.patch.dict(os.environ, prepare_multi_gpu_env(args)):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
    # the layer classes named in the config are the ones our (LLaVA-architecture) model is made of
    from silkfire.models.loading import load_vlm

    model, _ = load_vlm(make_test_model(tmp_path / "model"))
    classes = {type(module).__name__ for module in model.modules()}
    assert set(plugin.transformer_cls_names_to_wrap) <= classes
