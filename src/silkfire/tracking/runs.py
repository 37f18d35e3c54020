"""MLflow runs for pipeline stages: one parent run per pipeline run, one nested run per stage.

The Prefect flow opens the parent run and hands its id to the stage processes (which DVC starts) through
$SILKFIRE_PARENT_RUN_ID. A stage started by a plain `dvc repro` has no parent and opens a top-level run.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from silkfire.config import flatten
from silkfire.workspace import TOKEN_TAG, current_token

PARENT_RUN_ENV = "SILKFIRE_PARENT_RUN_ID"
STAGE_TAG = "silkfire.stage"
KIND_TAG = "silkfire.kind"  # "pipeline" on a flow's parent run (its name carries experiment, seed and flow run)
DESCRIPTION_LIMIT = 8000  # MLflow's limit on a run tag value, mlflow.note.content (the run's description) included


def description(text: str, limit: int = DESCRIPTION_LIMIT, *, full: str = "summary.md") -> str:
    """`text` as a run description: whole when it fits, else cut at a line end with a pointer to the artefact."""
    if len(text) <= limit:
        return text
    tail = f"\n\n… (cut here; the whole text is the run's `{full}` artefact)\n"
    head = text[: limit - len(tail)]
    return head[: head.rfind("\n") if "\n" in head else len(head)] + tail
# Never let anything that looks like a credential reach MLflow params (keys come from the environment only).
_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|credential)", re.IGNORECASE)


def git_commit(root: Path) -> str | None:
    """The checked-out commit of the project, with '-dirty' when tracked files have local changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def safe_params(cfg: DictConfig | Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flattened config as MLflow params, with credential-like keys redacted and values length-capped."""
    params: dict[str, str] = {}
    for key, value in flatten(cfg, prefix).items():
        text = "***" if _SECRET_KEY.search(key) else str(value)
        params[key] = text[:6000]  # MLflow's param value limit
    return params


def machine_tags(cfg: Any) -> dict[str, str]:
    """What a figure depends on beyond the config: the pipeline seed, the CPU, the thread count, library versions.

    Figures from the same commit and seed moved between machines (a knife-edge plateau in SFT), so every pipeline
    run records where it ran; `silkfire report` prints it beside the figures.
    """
    import json
    import platform
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or platform.machine()
    try:  # Linux names the model in /proc/cpuinfo; platform.processor() is often empty there
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("torch", "transformers", "peft", "mlflow", "dvc", "prefect", "great_expectations", "numpy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return {"silkfire.seed": str(cfg.seed), "silkfire.cpu": cpu, "silkfire.cpu_count": str(os.cpu_count()),
            "silkfire.threads": str(cfg.train.num_threads), "silkfire.python": platform.python_version(),
            "silkfire.versions": json.dumps(versions, sort_keys=True)}


def run_tags(root: Path, stage: str | None = None) -> dict[str, str]:
    tags = {"silkfire.project_root": str(root)}
    if token := current_token():  # a crash leaves the run RUNNING: the next holder finds it by this tag
        tags[TOKEN_TAG] = token
    if commit := git_commit(root):
        tags["mlflow.source.git.commit"] = commit
        tags["silkfire.git_commit"] = commit
    if stage:
        tags[STAGE_TAG] = stage
    return tags


@contextmanager
def stage_run(root: Path, stage: str, params: Mapping[str, str], experiment_name: str) -> Iterator[Any]:
    """Open the MLflow run of one stage, nested under $SILKFIRE_PARENT_RUN_ID when the flow set it."""
    import mlflow

    from silkfire.tracking.store import configure

    configure(root, experiment_name)
    parent = os.environ.get(PARENT_RUN_ENV) or None
    with mlflow.start_run(
        run_name=stage, nested=parent is not None, parent_run_id=parent, tags=run_tags(root, stage)
    ) as run:
        mlflow.log_params(dict(params))
        yield run
