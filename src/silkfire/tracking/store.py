"""Where MLflow tracks: a SQLite-backed store and registry under <project>/mlruns/, or $MLFLOW_TRACKING_URI."""

from __future__ import annotations

import os
from pathlib import Path

MLRUNS_DIR = "mlruns"
NOTE_TAG = "mlflow.note.content"  # what the MLflow UI shows as an experiment's or a run's description
EXPERIMENT_DESCRIPTION = """Silkfire: FIRE and VLFeedback/Silkie as one reproducible pipeline.

- One parent run per pipeline run, named `pipeline · <experiment> · seed <seed> · <Prefect flow-run name>`: the
  headline metrics (MME-style perception/cognition, MMHal-style score and hallucination rate, FIRE AT/RR, the data
  gate's verdict), the resolved config as params, the stage table as its description, lineage artefacts.
- One nested run per stage (`silkfire.stage` tag); a stage DVC skipped is `<stage> (cached)` and points at the run
  that produced its outputs (`silkfire.produced_by`). Curves: `train/*` and `eval/*` at their optimiser step.
- Models: `silkfire-sft` (`@candidate` = newest, `@champion` = winner of the register gate), `silkfire-dpo`,
  `silkfire-fire-student`, `silkfire-fire-teacher`, each an MLflow pyfunc (image + question -> answer):
  `mlflow models serve -m models:/silkfire-sft@champion --env-manager local`.
"""


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
    if experiment is None or NOTE_TAG not in (experiment.tags or {}):
        mlflow.MlflowClient(uri).set_experiment_tag(experiment_id, NOTE_TAG, EXPERIMENT_DESCRIPTION)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


UI_ENV = "SILKFIRE_MLFLOW_UI"  # where people open the MLflow UI; default: what `silkfire ui` serves
DEFAULT_UI = "http://127.0.0.1:5000"
# MLflow 3 opens an experiment in its GenAI view (traces); this query opens the classic runs table instead.
RUNS_VIEW_QUERY = "workflowType=machine_learning"


def ui_base(base: str | None = None) -> str:
    return (base or os.environ.get(UI_ENV) or DEFAULT_UI).rstrip("/")


def runs_view_url(experiment_id: str, base: str | None = None) -> str:
    """The experiment's runs table in the MLflow UI (not the GenAI view MLflow 3 opens by default)."""
    return f"{ui_base(base)}/#/experiments/{experiment_id}/runs?{RUNS_VIEW_QUERY}"


def run_url(experiment_id: str | None, run_id: str, base: str | None = None, tab: str = "") -> str:
    """A run's page (`tab`: "" = overview, "model-metrics" = charts, "artifacts"), in the runs (not GenAI) view."""
    return f"{ui_base(base)}/#/experiments/{experiment_id}/runs/{run_id}{'/' + tab if tab else ''}?{RUNS_VIEW_QUERY}"


def model_url(name: str, version: int | str, base: str | None = None) -> str:
    return f"{ui_base(base)}/#/models/{name}/versions/{version}"
