"""The MLflow sink of the training callbacks (silkfire.train.callbacks: one protocol for SFT and DPO): each logged
row goes into the active MLflow run at its optimizer step.

One name per metric (README "Look at the results"): SFT's rows arrive under the project's curve names
(``train/loss``, ``eval/loss``, ...); DPO's are prefixed ``dpo/``. The stage's final figures (``train_loss``,
``eval_loss``, ...) are logged once by the stage runner. Only this writes into the run the stage already opened
(Trainer's own MLflowCallback would open and close runs itself), so the curves land in the stage's nested run.
"""

from __future__ import annotations

from typing import Any

from silkfire.train.callbacks import Callback, finite_numbers


def mlflow_logger(prefix: str = "") -> Callback:
    """A training callback that logs each ``"log"`` row's finite numbers (``step`` aside) as ``<prefix><key>``."""
    import mlflow

    def log(event: str, step: int, values: dict[str, Any]) -> None:
        if event != "log":
            return
        metrics = {f"{prefix}{key}": value for key, value in finite_numbers(values).items() if key != "step"}
        if metrics:
            mlflow.log_metrics(metrics, step=step)

    return log
