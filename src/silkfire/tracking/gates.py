"""A data-quality gate's verdict and reports on the active MLflow run (one implementation for every gate stage)."""

from __future__ import annotations

from pathlib import Path

GATE_TAG = "silkfire.gate"  # "passed" | "failed"; `silkfire lineage` reads it back
POLICY_TAG = "silkfire.gate_policy"  # what the gate does with bad rows, in words (a bare "fail" read as a verdict)
POLICY_WORDS = {"fail": "stop the run on any bad row", "filter": "quarantine bad rows, keep the rest"}


def log_gate_reports(folder: Path, artifact_path: str = "validation") -> None:
    """Log a gate's report folder (text/JSON reports, Data Docs), leaving out the clean copies: they are as big
    as the data, and DVC already versions them."""
    import mlflow

    for item in sorted(folder.iterdir()):
        if item.name == "clean":
            continue
        if item.is_dir():
            mlflow.log_artifacts(str(item), artifact_path=f"{artifact_path}/{item.name}")
        else:
            mlflow.log_artifact(str(item), artifact_path=artifact_path)


def tag_gate(passed: bool, policy: str, kind: str | None = None) -> None:
    """The verdict as run tags; with several gates in one stage each kind also gets its own tag."""
    import mlflow

    verdict = "passed" if passed else "failed"
    words = f"{policy}: {POLICY_WORDS[policy]}" if policy in POLICY_WORDS else policy
    mlflow.set_tags({GATE_TAG: verdict, POLICY_TAG: words} | ({f"{GATE_TAG}.{kind}": verdict} if kind else {}))
