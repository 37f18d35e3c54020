"""Log a Hugging Face model folder to MLflow natively (safetensors files, no pyfunc) and register it."""

from __future__ import annotations

from pathlib import Path

MODEL_ARTIFACT_PATH = "model"


def log_and_register(model_dir: Path, registered_name: str, alias: str) -> int:
    """Log `model_dir` as the active run's `model/` artefacts, register it as a new version, set `alias`.

    VLMs are logged as their HF folder (config, safetensors weights, processor) rather than through
    mlflow.transformers/pyfunc, which do not cover image-text-to-text models; load a version back with
    `mlflow.artifacts.download_artifacts(f"models:/{name}@{alias}")` + `load_vlm(path)`.
    Returns the new version number.
    """
    import mlflow
    from mlflow import MlflowClient

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_and_register needs an active MLflow run")
    mlflow.log_artifacts(str(model_dir), artifact_path=MODEL_ARTIFACT_PATH)
    client = MlflowClient()
    try:
        client.get_registered_model(registered_name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(
            registered_name, description="Silkfire model (Hugging Face folder, safetensors weights)"
        )
    source = f"{run.info.artifact_uri}/{MODEL_ARTIFACT_PATH}"
    version = client.create_model_version(
        registered_name, source=source, run_id=run.info.run_id,
        tags={"silkfire.format": "hf-folder-safetensors"},
    )
    client.set_registered_model_alias(registered_name, alias, version.version)
    mlflow.set_tag("silkfire.registered_model", f"{registered_name}/{version.version}@{alias}")
    return int(version.version)
