"""Shared test set-up: offline, quiet tools; one migrated MLflow database copied per test (migrating takes
seconds, copying takes milliseconds)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# What a fresh clone holds that the pipeline needs (src/ is hashed by dvc.yaml's code dependencies).
PROJECT_FILES = ("dvc.yaml", "params.yaml", "conf", "flows", "src", "pipelines", ".dvc/config", ".dvc/.gitignore",
                 ".dvcignore")


@pytest.fixture(autouse=True)
def _no_tracking_uri_leak() -> Iterator[None]:
    """mlflow.set_tracking_uri (the stage runner calls it in-process) also exports MLFLOW_TRACKING_URI: without this,
    the next test's subprocesses (dvc repro -> silkfire stage) track into the previous test's deleted store
    ("attempt to write a readonly database"; found after benchmarks/gpu_check.py's test)."""
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  (None: back to "not set")
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite database with the current schema."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    directory = tmp_path_factory.mktemp("mlflow-template")
    db = directory / "mlflow.db"
    SqlAlchemyStore(f"sqlite:///{db}", str(directory / "artifacts"))
    return db


@pytest.fixture()
def mlflow_root(tmp_path: Path, mlflow_db_template: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project root whose mlruns/mlflow.db is a fresh, migrated store; no run is left active after."""
    import mlflow

    (tmp_path / "mlruns").mkdir()
    shutil.copyfile(mlflow_db_template, tmp_path / "mlruns" / "mlflow.db")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SILKFIRE_PARENT_RUN_ID", raising=False)
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture()
def copy_project(mlflow_db_template: Path):  # noqa: ANN201 -- returns the copying function
    """A function that copies the project's pipeline files into a folder (not yet a git repository), with a fresh
    migrated MLflow store under its mlruns/, and returns the folder."""

    def copy(root: Path) -> Path:
        for name in PROJECT_FILES:
            source = PROJECT_ROOT / name
            if not source.exists():  # e.g. pipelines/ before any branch exists
                continue
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                # a workspace's own dvc.lock files (a branch run here) are not part of the project
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "dvc.lock"))
            else:
                shutil.copyfile(source, target)
        (root / ".gitignore").write_text((PROJECT_ROOT / ".gitignore").read_text())
        (root / "mlruns").mkdir()
        shutil.copyfile(mlflow_db_template, root / "mlruns" / "mlflow.db")
        return root

    return copy
