"""A transformers TrainerCallback that streams training curves into the active MLflow run."""

from __future__ import annotations

import math
from typing import Any

from transformers import TrainerCallback


class MlflowMetricsCallback(TrainerCallback):
    """Log every numeric value of Trainer's log events at its global step (loss, lr, grad norm, eval loss).

    Trainer's own MLflowCallback opens and closes runs itself; this one only writes into the run the stage
    already opened, so the curves land in the stage's nested run.
    """

    def __init__(self, prefix: str = "train/") -> None:
        self.prefix = prefix

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        import mlflow

        if not state.is_world_process_zero or not logs:
            return
        metrics = {
            f"{self.prefix}{key}": float(value)
            for key, value in logs.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        }
        if metrics:
            mlflow.log_metrics(metrics, step=state.global_step)
