"""DPO through ``accelerate launch``: every process composes the same Hydra config and runs ``train_dpo``.

    accelerate launch --config_file accelerate/cpu_2proc.yaml -m silkfire.train.launch_dpo silkie.dpo.batch_size=8
    accelerate launch --config_file accelerate/deepspeed_zero2.yaml --num_processes 8 \\
        -m silkfire.train.launch_dpo experiment=silkie_7b --out models/dpo_7b --track

The loop (:func:`silkfire.train.dpo.train_dpo`) sees ``WORLD_SIZE`` and runs as process k of N through accelerate:
DDP (gloo on CPUs, NCCL on GPUs), DeepSpeed ZeRO-2/3 or FSDP, as the accelerate config says.
``silkie.dpo.batch_size`` is per process; each loss term is normalised by the counts of the global micro-batch, so
N processes x B pairs follow the loss curve of 1 process x N*B (tests/train/test_launch_dpo.py). The reference pass
is sharded across the processes. Checkpoints and resume (``silkie.dpo.resume: auto``) work as in one process: a
killed job launched again with the same overrides and process count continues from its newest checkpoint.

Inputs are the pipeline's: the gated pairs (``pairs`` stage; its gate's clean copy when it filtered), the images
under the world (or ``silkie.sample.image_root``) and the SFT model at ``paths.sft/model`` (``--start`` for
another). Only process 0 writes the model, ``history.csv`` and ``metrics.json`` and, with ``--track``, logs to
MLflow (run ``dpo (accelerate)``). It trains outside DVC: point ``--out`` elsewhere than ``paths.dpo`` to keep
the pipeline's output, or evaluate/register the folder afterwards.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from silkfire.train.launch import _barrier, _finish_tracking, _shutdown, _start_tracking, is_main_process

RUN_NAME = "dpo (accelerate)"


def dpo_inputs(cfg: Any, root: Path, start: Path | None = None) -> dict[str, Path]:
    """The gated pairs, their image folder and the start model; a missing one names the stage that makes it."""
    from silkfire.artefacts import feedback_image_root, gated_pairs

    pairs = gated_pairs(cfg, root)
    model = start if start is not None else root / cfg.paths.sft / "model"
    missing = [str(path) for path in (pairs, model) if not path.exists()]
    if missing:
        raise FileNotFoundError(f"DPO inputs missing: {', '.join(missing)}; run `dvc repro "
                                "pipelines/silkie/dvc.yaml:pairs` (world, SFT, sampling, judging, pairs) first, or "
                                "pass --start for another start model")
    return {"pairs": pairs, "images": feedback_image_root(cfg, root), "start": model}


def run(overrides: Sequence[str], out: Path | None = None, root: Path | None = None, track: bool = False,
        start: Path | None = None) -> dict[str, Any]:
    """Compose the config with ``overrides``, train, return the metrics (every process returns them)."""
    from silkfire.config import compose, project_root
    from silkfire.train.dpo import DPOConfig, train_dpo

    root = (root or project_root()).resolve()
    cfg = compose(list(overrides), root)
    inputs = dpo_inputs(cfg, root, start)
    out_dir = (out if out is not None else root / cfg.paths.dpo).resolve()
    config = DPOConfig.from_mapping(cfg.silkie.dpo)
    callbacks: list[Any] = []
    mlflow_run = None
    if track and is_main_process():
        mlflow_run = _start_tracking(cfg, root, overrides, RUN_NAME, ("seed", "silkie.seed", "silkie.dpo", "model",
                                                                      "runtime"))
        from silkfire.tracking.curve_logger import mlflow_logger

        callbacks.append(mlflow_logger("dpo/"))
    try:
        result = train_dpo(inputs["start"], inputs["pairs"], inputs["images"], config, out_dir, callbacks=callbacks)
        metrics: dict[str, Any] = dict(result.metrics)
        _barrier()
        if is_main_process() and mlflow_run is not None:
            _finish_tracking(metrics, out_dir)
    finally:
        if mlflow_run is not None:
            import mlflow

            mlflow.end_run()
    return metrics


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m silkfire.train.launch_dpo", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. silkie.dpo.batch_size=4 experiment=silkie")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: paths.dpo of the config, i.e. the dpo stage's output)")
    parser.add_argument("--start", type=Path, default=None, help="start model folder (default: <paths.sft>/model)")
    parser.add_argument("--root", type=Path, default=None, help="project root (default: found from the cwd)")
    parser.add_argument("--track", action="store_true", help="log params, curves and metrics to MLflow (rank 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from silkfire.runtime import RuntimeConfigError

    args = build_parser().parse_args(argv)
    try:
        metrics = run(args.overrides, out=args.out, root=args.root, track=args.track, start=args.start)
    except (FileNotFoundError, RuntimeConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        _shutdown()
    if is_main_process():
        shown = ("num_processes", "global_batch_size", "global_step", "loss", "reward_accuracy",
                 "eval_reward_accuracy", "pairs_per_second", "train_seconds", "reference_seconds", "device", "dtype")
        print(json.dumps({key: metrics[key] for key in shown if key in metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
