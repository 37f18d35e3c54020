"""Log a Hugging Face model folder to MLflow as a servable pyfunc model (safetensors weights) and register it.

The MLflow model (silkfire.serving) holds the HF folder as its artefact ``hf_model`` and answers an image and a
question through the project's own loader and greedy generation, so a version loads with
``mlflow.pyfunc.load_model("models:/<name>@<alias>")`` and serves with ``mlflow models serve``. The HF folder
alone: ``mlflow.artifacts.download_artifacts("models:/<name>@<alias>")`` + ``hf_model_dir(path)`` + ``load_vlm``.
"""

from __future__ import annotations

from collections.abc import Mapping
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


def log_trained_model(model_dir: Path) -> dict[str, str]:
    """Log ``model_dir`` as the active run's model (a training stage does this); returns what a register stage
    registers from: ``{"run_id", "model_uri", "model_id"}`` (the training stage writes it to its metrics)."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_trained_model needs an active MLflow run")
    info = log_model(Path(model_dir))
    return {"run_id": run.info.run_id, "model_uri": info.model_uri, "model_id": info.model_id}


def register_logged(logged: Mapping[str, str], registered_name: str, alias: str) -> int:
    """Register a model a training run logged (:func:`log_trained_model`'s record) as a version of
    ``registered_name`` and give it ``alias``; returns the version number.

    The version's run is the training run, so lineage reads the run that made the model. Registering the same logged
    model under the same name again (the register stage re-run for a new rule) reuses its version.
    """
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    try:
        client.get_registered_model(registered_name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(registered_name,
                                       description=REGISTERED_DESCRIPTION.format(name=registered_name))
    same = [version for version in client.search_model_versions(f"name = '{registered_name}'")
            if version.run_id == logged["run_id"] and version.source == logged["model_uri"]]
    version = same[0] if same else client.create_model_version(
        registered_name, source=logged["model_uri"], run_id=logged["run_id"], model_id=logged.get("model_id"),
        tags={FORMAT_TAG: FORMAT},
    )
    client.set_registered_model_alias(registered_name, alias, version.version)
    # No alias here: aliases move (candidate -> champion), the registry is where they are read.
    client.set_tag(logged["run_id"], REGISTERED_TAG, f"{registered_name}/{version.version}")
    return int(version.version)


def log_and_register(model_dir: Path, registered_name: str, alias: str) -> int:
    """Log ``model_dir`` as the active run's model, register it as a new version of ``registered_name``, set
    ``alias`` (the FIRE stages, which have no register stage, and scripts); returns the version number."""
    return register_logged(log_trained_model(Path(model_dir)), registered_name, alias)
