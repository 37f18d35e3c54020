"""Dataset inputs of a run, identified by their DVC digest (the same id `dvc.lock` and the remote use)."""

from __future__ import annotations

import warnings
from pathlib import Path

from silkfire.tracking.lineage import output_digest


def file_md5(path: Path) -> str:
    """The md5 of a file's bytes (what DVC records for each file of a directory output)."""
    import hashlib

    digest = hashlib.md5()  # noqa: S324 -- content identity, as DVC uses it, not security
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def log_dvc_dataset(root: Path, dvc_out: str, file: Path, name: str, context: str) -> str | None:
    """Log `file` (JSONL records inside the DVC output `dvc_out`) as an MLflow dataset input of the active
    run. Its digest is the file's own md5 (train and val of one output differ); the output's DVC md5 (the
    version `dvc.lock` and the remote know) is the input's `dvc.md5` tag. Returns the output's DVC md5 (None
    when DVC has not recorded it)."""
    import mlflow
    import pandas as pd

    out_digest = output_digest(root, dvc_out)
    digest = file_md5(file)
    frame = pd.read_json(file, lines=True)
    with warnings.catch_warnings():
        # MLflow 3.17 registers its local-artifact source class twice and warns that a path is ambiguous.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        dataset = mlflow.data.from_pandas(frame, source=str(file.resolve()), name=name, digest=digest)
    mlflow.log_input(dataset, context=context, tags={"dvc.out": dvc_out, "dvc.md5": out_digest or "unknown"})
    return out_digest
