"""Run one stage: in this process inside its MLflow run, writing its metrics file (:func:`run_stage`, what
`silkfire stage NAME` does), or through DVC (:func:`reproduce_stage`, what the flow does: DVC decides whether it is
up to date); and the run table's row of a finished one (:func:`collect_row`, which needs the stage's `summary`)."""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from silkfire.config import flatten, load_params, project_root
from silkfire.images import DEFAULT_MAX_PIXELS, export_max_pixels
from silkfire.io import write_json
from silkfire.reporting import METRICS_TABLE_DIR, metrics_table_row
from silkfire.stages import ALL_STAGES
from silkfire.tracking.runs import safe_params, stage_run
from silkfire.train.callbacks import finite_numbers

if TYPE_CHECKING:
    from silkfire.reporting import StageRow


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


class ConfigError(ValueError):
    """A setting of the composed config that a stage of the pipeline would refuse."""


def check_config(cfg: DictConfig, stages: Sequence[str]) -> None:
    """Parse the typed settings of every stage in ``stages`` (each module's ``check``, the parser its ``run`` uses)
    so that a wrong key or value fails when the config is composed, before the first stage runs -- not an hour
    later when the stage that reads it starts. Raises :class:`ConfigError` naming every stage that refuses."""
    problems = []  # (the runtime section is checked by silkfire.config.compose itself)
    for name in stages:
        module = stage_module(name)
        if hasattr(module, "check"):
            try:
                module.check(cfg)
            except (ValueError, TypeError, KeyError) as error:
                problems.append(f"stage {name}: {error}")
    if problems:
        raise ConfigError("the config would fail these stages (fix the key, or the override that set it):\n  "
                          + "\n  ".join(problems))


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
        if (row := metrics_table_row(name, metrics)) is not None:
            write_json(root / cfg.paths.metrics / METRICS_TABLE_DIR / f"{name}.json", row)
        mlflow.log_metrics(finite_numbers(flatten(metrics)))
        mlflow.set_tag("silkfire.summary", module.summary(metrics))
        metrics["mlflow_run_id"] = run.info.run_id
    return metrics


def _with_venv_on_path() -> None:
    """DVC runs stage commands (`silkfire stage ...`) in a shell: make this interpreter's scripts findable."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if bin_dir not in path.split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + path


def reproduce_stage(root: Path, stage: str) -> bool:
    """`dvc repro --single-item STAGE`. Returns True when the stage ran (or was restored from DVC's run
    cache), False when it was already up to date."""
    from dvc.repo import Repo

    from silkfire.stages import dvc_target

    _with_venv_on_path()
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    with Repo(str(root)) as repo:
        ran = repo.reproduce(targets=[dvc_target(stage)], single_item=True)
    return bool(ran)


def collect_row(root: Path, cfg: DictConfig, stage: str, *, ran: bool, parent_run_id: str) -> StageRow:
    """Summarise a finished stage. A stage DVC skipped still gets a nested run in this pipeline run, tagged
    cached and pointing at the run that produced its outputs, so every pipeline run shows every stage."""
    import mlflow

    from silkfire.reporting import StageRow, latest_stage_run, stage_metrics
    from silkfire.tracking.lineage import stage_digests
    from silkfire.tracking.runs import run_tags

    metrics = stage_metrics(root, cfg, stage)
    summary = stage_module(stage).summary(metrics) if metrics else "(no metrics)"
    digests = stage_digests(root, stage)
    # The stage's data/model directory identifies its version better than its small metrics files.
    digest = next((d for d in digests.values() if d.endswith(".dir")), next(iter(digests.values()), ""))
    if ran:
        run_id = latest_stage_run(stage, parent_run_id)
    else:
        run_id = latest_stage_run(stage, None)
        tags = run_tags(root, stage) | {"silkfire.cached": "true", "silkfire.produced_by": run_id}
        with mlflow.start_run(run_name=f"{stage} (cached)", nested=True, tags=tags):
            mlflow.log_dict(metrics, f"metrics/{stage}.json")
    seconds = metrics.get("wall_seconds") if ran else None
    return StageRow(stage, "ran" if ran else "cached", summary, run_id, digest, seconds)
