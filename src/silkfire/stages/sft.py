"""Stage `sft`: supervised fine-tuning of the base model on the world's instructions.

Curves stream to MLflow while training; the final model folder (safetensors + processor) is logged to the run (the
`register` stage registers it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from silkfire.quality.verdict import require_passed
from silkfire.stages import Dep, Out

PARAMS = (
    "seed", "train", "model", "runtime", "tracking.log_model", "paths.world", "paths.reports", "paths.base_model", "paths.sft", "paths.metrics",
)
DEPS = (
    Dep("${paths.world}"),
    Dep("${paths.reports}/validate/verdict.json",
        "the gate's verdict (success, md5 of the files it vouches for), not its reports (timings, Data Docs)"),
    Dep("${paths.base_model}"),
)
OUTS = (
    Out("${paths.sft}", persist=True,
        note="a killed run's checkpoints survive repro: train.resume=auto continues them (fingerprinted)"),
)
CURVE_NAMES = ("sft",)  # metrics/curves/<name>.{csv,png}


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    import mlflow

    from silkfire.artefacts import gated_file, resolve_base
    from silkfire.tracking.curve_logger import mlflow_logger
    from silkfire.tracking.datasets import log_dvc_dataset
    from silkfire.tracking.plots import publish_curves, training_curves
    from silkfire.tracking.registry import log_trained_model
    from silkfire.train.sft import SFTConfig, train_sft

    require_passed(cfg, root, "sft")  # the world gate's verdict vouches for the files read below
    world = root / cfg.paths.world
    out_dir = root / cfg.paths.sft
    # What passed the gate: the world files, or their clean copies when the gate's policy filtered rows.
    splits = {split: gated_file(cfg, root, f"{split}.jsonl") for split in ("train", "val")}
    for split, path in splits.items():
        log_dvc_dataset(root, cfg.paths.world, path, f"world-{split}", context=split)
    result = train_sft(
        resolve_base(root / cfg.paths.base_model),
        splits["train"],
        splits["val"],
        world,
        settings(cfg),
        out_dir,
        callbacks=[mlflow_logger()],
    )
    publish_curves(out_dir / "history.csv", training_curves(result.history), root / cfg.paths.metrics, "sft")
    metrics: dict[str, Any] = dict(result.metrics)
    if cfg.tracking.log_model:  # the register stage registers it: registry names never retrain
        metrics["logged_model"] = log_trained_model(result.model_dir)
    return metrics


def summary(metrics: dict[str, Any]) -> str:
    parts = []
    for key in ("train_loss", "eval_loss", "samples_per_second"):
        if isinstance(metrics.get(key), (int, float)):
            parts.append(f"{key}={metrics[key]:.3g}")
    if metrics.get("resumed_from_step"):
        parts.append(f"resumed from step {metrics['resumed_from_step']} ({metrics.get('steps_run')} steps run)")
    if "logged_model" in metrics:
        parts.append("model logged")
    return " ".join(parts)


def settings(cfg: DictConfig) -> Any:
    """The SFT settings (``train``), parsed: :func:`check` runs this before any stage of a pipeline does."""
    from silkfire.train.sft import SFTConfig

    return SFTConfig.from_mapping(cfg.train)


def check(cfg: DictConfig) -> None:
    """Parse the typed settings this stage reads (silkfire.stages.runner.check_config: before any stage runs)."""
    settings(cfg)
