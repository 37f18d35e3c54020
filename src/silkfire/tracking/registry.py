"""Log a Hugging Face model folder to MLflow as a servable pyfunc model (safetensors weights) and register it.

The MLflow model (silkfire.serving) holds the HF folder as its artefact ``hf_model`` and answers an image and a
question through the project's own loader and greedy generation, so a version loads with
``mlflow.pyfunc.load_model("models:/<name>@<alias>")`` and serves with ``mlflow models serve``. The HF folder
alone: ``mlflow.artifacts.download_artifacts("models:/<name>@<alias>")`` + ``hf_model_dir(path)`` + ``load_vlm``.
"""

from __future__ import annotations

from pathlib import Path

MODEL_ARTIFACT_PATH = "model"  # the logged model's name in its run
REGISTERED_TAG = "silkfire.registered_model"  # "<name>/<version>": aliases move, so they live in the registry only
FORMAT_TAG = "silkfire.format"
FORMAT = "mlflow-pyfunc+hf-safetensors"
# An input example is validated at logging time by loading the model and answering it: for checkpoints of
# several GB that would load the weights a second time, so above this size only the signature is logged.
EXAMPLE_MAX_BYTES = 2 * 1024**3
REGISTERED_DESCRIPTION = (
    "Silkfire vision-language model: an MLflow pyfunc (image + question -> answer) around the Hugging Face folder "
    "(safetensors weights) as its artefact hf_model. `mlflow.pyfunc.load_model('models:/{name}@champion')` or "
    "`mlflow models serve -m models:/{name}@champion --env-manager local`; see silkfire.serving."
)


def hf_model_dir(model_path: str | Path) -> Path:
    """The HF folder inside a downloaded MLflow model folder (its MLmodel names it), or the folder itself when it
    is an HF folder already."""
    import yaml

    from silkfire.serving import HF_ARTIFACT

    path = Path(model_path)
    if not (path / "MLmodel").is_file():
        return path
    flavor = yaml.safe_load((path / "MLmodel").read_text(encoding="utf-8"))["flavors"]["python_function"]
    return path / flavor["artifacts"][HF_ARTIFACT]["path"]


def _weights_bytes(model_dir: Path) -> int:
    return sum(path.stat().st_size for path in model_dir.rglob("*.safetensors"))


def log_model(model_dir: Path) -> object:
    """Log `model_dir` as the active run's pyfunc model (with signature and, for models up to
    EXAMPLE_MAX_BYTES, an input example); returns MLflow's ModelInfo."""
    import mlflow

    import silkfire
    from silkfire import serving

    package = Path(silkfire.__file__).resolve().parent
    small = _weights_bytes(model_dir) <= EXAMPLE_MAX_BYTES
    return mlflow.pyfunc.log_model(
        name=MODEL_ARTIFACT_PATH,
        python_model=str(package / "serving_model.py"),  # models-from-code: the class by reference, no pickle
        code_paths=[str(package)],  # the silkfire package as it was when the model was logged
        artifacts={serving.HF_ARTIFACT: str(model_dir)},
        signature=serving.signature(),
        input_example=serving.input_example() if small else None,
        pip_requirements=serving.requirements(),  # pinned from this environment; no slow inference pass
        metadata={"silkfire.format": FORMAT},
    )


def log_and_register(model_dir: Path, registered_name: str, alias: str) -> int:
    """Log `model_dir` as the active run's model, register it as a new version of `registered_name`, set `alias`.

    Returns the new version number.
    """
    import mlflow
    from mlflow import MlflowClient

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_and_register needs an active MLflow run")
    info = log_model(Path(model_dir))
    client = MlflowClient()
    try:
        client.get_registered_model(registered_name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(registered_name,
                                       description=REGISTERED_DESCRIPTION.format(name=registered_name))
    version = client.create_model_version(
        registered_name, source=info.model_uri, run_id=run.info.run_id, model_id=info.model_id,
        tags={FORMAT_TAG: FORMAT},
    )
    client.set_registered_model_alias(registered_name, alias, version.version)
    # No alias here: aliases move (candidate -> champion), the registry is where they are read.
    mlflow.set_tag(REGISTERED_TAG, f"{registered_name}/{version.version}")
    return int(version.version)
