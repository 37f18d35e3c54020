"""DVC, driven in-process: reproduce one stage (DVC decides whether it is up to date), push, status."""

from __future__ import annotations

import os
import sys
from pathlib import Path


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


def push(root: Path) -> int:
    """Push every DVC-tracked output to the default remote. Returns the number of files transferred."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return int(repo.push())


def has_default_remote(root: Path) -> bool:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return bool(repo.config.get("core", {}).get("remote"))
