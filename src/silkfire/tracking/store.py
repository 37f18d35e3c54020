"""Where MLflow tracks: a SQLite-backed store and registry under <project>/mlruns/, or $MLFLOW_TRACKING_URI."""

from __future__ import annotations

import os
from pathlib import Path

MLRUNS_DIR = "mlruns"


def tracking_uri(root: Path) -> str:
    """$MLFLOW_TRACKING_URI when set (a tracking server, a test store), else the project's SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / MLRUNS_DIR / 'mlflow.db').resolve()}"


def artifact_location(root: Path) -> str:
    """Artefacts of the project's store live beside its database, under mlruns/artifacts."""
    return (root / MLRUNS_DIR / "artifacts").resolve().as_uri()


def configure(root: Path, experiment_name: str) -> str:
    """Point MLflow at the store, create the experiment once (artefacts under mlruns/), return its id.

    Creating the SQLite database migrates its schema (a few seconds); the caller that runs first creates
    it, so processes started later by DVC never race on the migration.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    (root / MLRUNS_DIR).mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is None:
        # The artefact root only applies to our own SQLite store; a server chooses its own.
        location = artifact_location(root) if uri.startswith("sqlite:") else None
        try:
            experiment_id = mlflow.create_experiment(experiment_name, artifact_location=location)
        except MlflowException:  # created meanwhile by another process
            experiment_id = mlflow.get_experiment_by_name(experiment_name).experiment_id
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id
