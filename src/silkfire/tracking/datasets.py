"""Dataset inputs of a run, identified by their DVC digest (the same id `dvc.lock` and the remote use)."""

from __future__ import annotations

import warnings
from pathlib import Path

from silkfire.tracking.lineage import output_digest


def log_dvc_dataset(root: Path, dvc_out: str, file: Path, name: str, context: str) -> str | None:
    """Log `file` (JSONL records inside the DVC output `dvc_out`) as an MLflow dataset input of the active
    run, with the output's DVC md5 as its digest. Returns the digest (None when DVC has not recorded it)."""
    import mlflow
    import pandas as pd

    digest = output_digest(root, dvc_out)
    frame = pd.read_json(file, lines=True)
    with warnings.catch_warnings():
        # MLflow 3.17 registers its local-artifact source class twice and warns that a path is ambiguous.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        dataset = mlflow.data.from_pandas(frame, source=str(file.resolve()), name=name, digest=digest)
    mlflow.log_input(dataset, context=context, tags={"dvc.out": dvc_out, "dvc.md5": digest or "unknown"})
    return digest
