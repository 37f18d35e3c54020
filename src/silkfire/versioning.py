"""DVC, driven in-process: push the outputs, check for a remote. (Reproducing one stage is the pipeline's:
:func:`silkfire.stages.runner.reproduce_stage`.)"""

from __future__ import annotations

from pathlib import Path


def push(root: Path) -> int:
    """Push every DVC-tracked output to the default remote. Returns the number of files transferred."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return int(repo.push())


def has_default_remote(root: Path) -> bool:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return bool(repo.config.get("core", {}).get("remote"))
