"""What the registry holds and where each model came from (`silkfire models`, `silkfire lineage`).

Lineage walks from a registered version to the MLflow run that trained it, then to that run's pipeline (parent)
run and its sibling stage runs: git commit, DVC digests of the training data, the data-quality gate's verdict and
Data Docs, and the resolved Hydra config (params.yaml logged by the flow). Everything comes from the tracking
store, so it works on any machine that can reach the store, without the original workspace.
"""

from __future__ import annotations

from typing import Any

from silkfire.tracking.champion import DECISION_TAG, version_metrics
from silkfire.tracking.runs import STAGE_TAG

PARENT_TAG = "mlflow.parentRunId"
COMMIT_TAG = "mlflow.source.git.commit"


def list_models(client: Any) -> list[dict[str, Any]]:
    """One row per registered version: name, version, aliases, run, recorded metrics, champion decision."""
    rows: list[dict[str, Any]] = []
    for model in client.search_registered_models():
        aliases_of: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases_of.setdefault(str(version), []).append(alias)
        for version in client.search_model_versions(f"name = '{model.name}'"):
            tags = version.tags or {}
            rows.append({
                "name": model.name, "version": int(version.version),
                "aliases": sorted(aliases_of.get(str(version.version), [])),
                "run_id": version.run_id, "created": int(version.creation_timestamp or 0),
                "metrics": version_metrics(tags), "decision": tags.get(DECISION_TAG, ""),
            })
    return sorted(rows, key=lambda row: (row["name"], -row["version"]))


def _dataset_facts(dataset_input: Any) -> dict[str, Any]:
    """A run's dataset input: name, the file's digest, the DVC output and its digest, the source as a path or URI
    (MLflow stores it as a JSON string)."""
    import json

    dataset, tags = dataset_input.dataset, {t.key: t.value for t in dataset_input.tags}
    source: Any = dataset.source
    try:
        parsed = json.loads(source)
        source = parsed.get("uri") or parsed.get("path") or parsed if isinstance(parsed, dict) else parsed
    except (TypeError, ValueError):
        pass
    return {"name": dataset.name, "context": tags.get("mlflow.data.context"), "digest": dataset.digest,
            "source": source, "dvc_out": tags.get("dvc.out"), "dvc_out_digest": tags.get("dvc.md5")}


def resolve_version(client: Any, ref: str) -> Any:
    """`name@alias`, `name/version` or `name` (its latest version) -> ModelVersion, with a clear error."""
    from mlflow.exceptions import MlflowException

    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        if "/" in ref:
            name, version = ref.rsplit("/", 1)
            return client.get_model_version(name, version)
        versions = client.search_model_versions(f"name = '{ref}'")
    except MlflowException as error:
        raise LookupError(f"no registered model version {ref!r}: {error.message}") from None
    if not versions:
        raise LookupError(f"no registered model named {ref!r}; `silkfire models` lists them")
    return max(versions, key=lambda v: int(v.version))


def lineage(client: Any, ref: str) -> dict[str, Any]:
    """Everything needed to reproduce or audit a registered version."""
    version = resolve_version(client, ref)
    run = client.get_run(version.run_id)
    tags = run.data.tags
    result: dict[str, Any] = {
        "model": f"{version.name}/{version.version}",
        "aliases": sorted(version.aliases or []),
        "source": version.source,
        "run_id": run.info.run_id,
        "stage": tags.get(STAGE_TAG),
        "git_commit": tags.get(COMMIT_TAG),
        "training_data": [_dataset_facts(d) for d in run.inputs.dataset_inputs],
        "metrics": version_metrics(version.tags or {}),
        "decision": (version.tags or {}).get(DECISION_TAG),
    }
    parent_id = tags.get(PARENT_TAG)
    if parent_id is None:
        result["pipeline_run_id"] = None
        result["note"] = "trained by a plain `dvc repro` (no pipeline run): config = this run's params"
        result["config_params"] = dict(run.data.params)
        return result
    parent = client.get_run(parent_id)
    result["pipeline_run_id"] = parent_id
    result["dvc_digests"] = {key.removeprefix("silkfire.dvc."): value
                             for key, value in parent.data.tags.items() if key.startswith("silkfire.dvc.")}
    result["overrides"] = parent.data.tags.get("silkfire.overrides")
    result["config_artifact"] = f"runs:/{parent_id}/lineage/params.yaml"
    result["dvc_lock_artifact"] = f"runs:/{parent_id}/lineage/dvc.lock"
    gates = client.search_runs(
        [run.info.experiment_id],
        f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.`{STAGE_TAG}` LIKE 'validate%'",
    )
    # A gate that was up to date in this pipeline run points at the run that actually validated the data.
    gates = [client.get_run(g.data.tags["silkfire.produced_by"]) if "silkfire.produced_by" in g.data.tags else g
             for g in gates]
    result["quality_gates"] = [
        {"stage": gate.data.tags.get(STAGE_TAG), "run_id": gate.info.run_id,
         "verdict": gate.data.tags.get("silkfire.gate"), "policy": gate.data.tags.get("silkfire.gate_policy"),
         "metrics": dict(gate.data.metrics), "data_docs": f"runs:/{gate.info.run_id}/validation"}
        for gate in gates
    ]
    return result


def resolved_config(ref_lineage: dict[str, Any]) -> str:
    """The resolved Hydra config (params.yaml) that the model's pipeline run used."""
    import mlflow

    uri = ref_lineage.get("config_artifact")
    if not uri:
        raise LookupError("this model has no pipeline run, so no logged params.yaml; see config_params")
    return mlflow.artifacts.load_text(uri)
