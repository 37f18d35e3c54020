"""End-to-end fixtures: a real Prefect test server (one per session) and a throw-away copy of the project
that is its own git + DVC repository, with a fresh MLflow store under its mlruns/."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# What a fresh clone holds that the pipeline needs (src/ is hashed by dvc.yaml's code dependencies).
PROJECT_FILES = ("dvc.yaml", "params.yaml", "conf", "flows", "src", "pipelines", ".dvc/config", ".dvc/.gitignore",
                 ".dvcignore")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture()
def project(tmp_path: Path, mlflow_db_template: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "project"
    for name in PROJECT_FILES:
        source = PROJECT_ROOT / name
        if not source.exists():  # e.g. pipelines/ before any branch exists
            continue
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copyfile(source, target)
    (root / ".gitignore").write_text((PROJECT_ROOT / ".gitignore").read_text())
    (root / "mlruns").mkdir()
    shutil.copyfile(mlflow_db_template, root / "mlruns" / "mlflow.db")
    _git(root, "init", "-q")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "project")
    monkeypatch.chdir(root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SILKFIRE_ROOT", raising=False)
    return root
