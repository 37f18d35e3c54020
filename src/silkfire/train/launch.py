"""SFT through ``accelerate launch``: every process composes the same Hydra config and runs ``train_sft``.

    accelerate launch --config_file accelerate/cpu_2proc.yaml -m silkfire.train.launch train.batch_size=4
    accelerate launch --config_file accelerate/deepspeed_zero2.yaml --num_processes 8 \\
        -m silkfire.train.launch model=llava_1_5_7b --out models/sft_7b --track

(DPO has its own entry point beside this one: :mod:`silkfire.train.launch_dpo`.)

transformers' Trainer reads the environment ``accelerate launch`` (torchrun underneath) sets up: it joins the
process group (gloo on CPU, NCCL on GPUs), shards each global batch across processes, averages gradients and
normalises the loss by the token count of the *global* batch, so N processes x B samples follow the same loss
curve as 1 process x N*B samples (tests/train/test_launch.py measures it). ``train.batch_size`` is per process.

The world data and the base model are the ones the pipeline's ``validate`` and ``base`` stages left (or any
paths given by overrides). Only the main process writes the model, prints the summary and, with ``--track``,
logs to MLflow (run ``sft (accelerate)`` in the project's store or $MLFLOW_TRACKING_URI). A killed job launched
again with the same overrides continues from its newest checkpoint under ``<out>/checkpoints`` (``train.resume:
auto``, :mod:`silkfire.train.resume`; every process takes the decision after the main one acted on it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RUN_NAME = "sft (accelerate)"


def world_size() -> int:
    """Processes in this job (``accelerate launch``/torchrun set WORLD_SIZE; 1 when run plainly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def base_model_path(cfg: Any, root: Path) -> str | Path:
    """The model to fine-tune: what the `base` stage prepared, else a pretrained name straight from the config."""
    from silkfire.artefacts import resolve_base

    base_dir = root / cfg.paths.base_model
    if base_dir.is_dir():
        return resolve_base(base_dir)
    if cfg.model.get("source") == "pretrained" and cfg.model.get("name_or_path"):
        return str(cfg.model.name_or_path)
    raise FileNotFoundError(
        f"no base model at {base_dir}: run `dvc repro base` (or `silkfire stage base`) first, "
        "or choose a pretrained model (model=llava_1_5_7b)"
    )


def world_files(cfg: Any, root: Path) -> dict[str, Path]:
    """train/val files that passed the gate (its clean copies when its policy filtered rows)."""
    from silkfire.artefacts import gated_file

    files = {split: gated_file(cfg, root, f"{split}.jsonl") for split in ("train", "val")}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"world data missing: {', '.join(missing)}; run `dvc repro validate` (generate + gate) first"
        )
    return files


def run(overrides: Sequence[str], out: Path | None = None, root: Path | None = None,
        track: bool = False) -> dict[str, Any]:
    """Compose the config with ``overrides``, train, return the metrics (every process returns them)."""
    from silkfire.config import compose, project_root
    from silkfire.train.sft import SFTConfig, train_sft

    root = (root or project_root()).resolve()
    cfg = compose(list(overrides), root)
    files = world_files(cfg, root)
    out_dir = (out if out is not None else root / cfg.paths.sft).resolve()
    config = SFTConfig.from_mapping(cfg.train)
    callbacks: list[Any] = []
    mlflow_run = None
    if track and is_main_process():
        mlflow_run = _start_tracking(cfg, root, overrides)
        from silkfire.tracking.curve_logger import mlflow_logger

        callbacks.append(mlflow_logger())
    try:
        result = train_sft(base_model_path(cfg, root), files["train"], files["val"], root / cfg.paths.world,
                           config, out_dir, callbacks=callbacks)
        metrics: dict[str, Any] = dict(result.metrics)
        # train_sft counts per-process samples; the job saw world_size times as many per step.
        processes = world_size()
        metrics["num_processes"] = processes
        metrics["global_batch_size"] = config.batch_size * config.grad_accum * processes
        for key in ("samples_per_second", "questions_per_second"):
            metrics[key] = float(metrics[key]) * processes
        _barrier()  # every rank's train_sft has written its files before rank 0 writes the job's metrics
        if is_main_process():
            from silkfire.io import write_json

            write_json(out_dir / "metrics.json", metrics)
            if mlflow_run is not None:
                _finish_tracking(metrics, out_dir)
    finally:
        if mlflow_run is not None:
            import mlflow

            mlflow.end_run()
    return metrics


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _start_tracking(cfg: Any, root: Path, overrides: Sequence[str], run_name: str = RUN_NAME,
                    sections: Sequence[str] = ("seed", "train", "model", "runtime")) -> Any:
    import mlflow

    from silkfire.config import flatten
    from silkfire.tracking.runs import safe_params
    from silkfire.tracking.store import configure

    configure(root, cfg.tracking.experiment_name)
    run = mlflow.start_run(run_name=run_name)
    mlflow.log_params(safe_params({key: value for key, value in flatten(cfg).items()
                                   if any(key == part or key.startswith(part + ".") for part in sections)}))
    mlflow.set_tags({"silkfire.launch.overrides": " ".join(overrides) or "-",
                     "silkfire.launch.num_processes": str(world_size())})
    return run


def _finish_tracking(metrics: dict[str, Any], out_dir: Path) -> None:
    import mlflow

    from silkfire.train.callbacks import finite_numbers

    mlflow.log_metrics(finite_numbers(metrics))
    history = out_dir / "history.csv"
    if history.is_file():
        mlflow.log_artifact(str(history), artifact_path="curves")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m silkfire.train.launch", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. train.batch_size=4 experiment=smoke")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: paths.sft of the config, i.e. the sft stage's output)")
    parser.add_argument("--root", type=Path, default=None, help="project root (default: found from the cwd)")
    parser.add_argument("--track", action="store_true", help="log params, curves and metrics to MLflow (rank 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        metrics = run(args.overrides, out=args.out, root=args.root, track=args.track)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        _shutdown()
    if is_main_process():
        shown = ("num_processes", "global_batch_size", "global_step", "train_loss", "eval_loss",
                 "samples_per_second", "train_seconds")
        print(json.dumps({key: metrics[key] for key in shown if key in metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
