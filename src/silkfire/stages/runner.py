"""Run one stage inside its MLflow run and write its metrics file (what `silkfire stage NAME` does)."""

from __future__ import annotations

import importlib
import math
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from omegaconf import DictConfig, OmegaConf

from silkfire.config import flatten, load_params, project_root
from silkfire.images import DEFAULT_MAX_PIXELS, export_max_pixels
from silkfire.io import write_json
from silkfire.stages import ALL_STAGES
from silkfire.tracking.runs import safe_params, stage_run


def stage_module(name: str) -> ModuleType:
    if name not in ALL_STAGES:
        raise ValueError(f"unknown stage {name!r}; stages are: {', '.join(ALL_STAGES)}")
    return importlib.import_module(f"silkfire.stages.{name}")


def stage_params(cfg: DictConfig, keys: tuple[str, ...]) -> dict[str, Any]:
    """The subset of the config a stage reads, keyed by the dotted keys it declares."""
    return {key: OmegaConf.to_container(v) if isinstance(v := OmegaConf.select(cfg, key), DictConfig) else v
            for key in keys}


def metrics_path(root: Path, cfg: DictConfig, stage: str) -> Path:
    return root / cfg.paths.metrics / f"{stage}.json"


def run_stage(name: str, root: Path | None = None) -> dict[str, Any]:
    """Load params.yaml, run the stage in its MLflow run, write metrics/<stage>.json, return the metrics."""
    import mlflow

    module = stage_module(name)
    root = root or project_root()
    cfg = load_params(root)
    from silkfire.runtime import check

    check(cfg)  # runtime.device=cuda on a machine without one: a clear error before the stage does anything
    # The image policy's limit for this stage and every process it starts (DVC stage processes, fan-out workers).
    export_max_pixels(int(OmegaConf.select(cfg, "quality.max_image_pixels", default=DEFAULT_MAX_PIXELS)))
    params = safe_params(stage_params(cfg, module.PARAMS))
    with stage_run(root, name, params, cfg.tracking.experiment_name) as run:
        started = time.perf_counter()
        metrics = module.run(cfg, root)
        metrics["wall_seconds"] = round(time.perf_counter() - started, 3)
        write_json(metrics_path(root, cfg, name), metrics)
        numeric = {k: float(v) for k, v in flatten(metrics).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        mlflow.log_metrics(numeric)
        mlflow.set_tag("silkfire.summary", module.summary(metrics))
        metrics["mlflow_run_id"] = run.info.run_id
    return metrics
