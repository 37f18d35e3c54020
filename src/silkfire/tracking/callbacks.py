"""A transformers TrainerCallback that streams training curves into the active MLflow run (and :func:`mlflow_logger`,
the same for silkfire.train.dpo's callbacks: the `dpo` stage and silkfire.train.launch_dpo).

One name per metric (README "Look at the results"): curves live under ``train/`` and ``eval/`` and are logged at
their optimiser step; the stage's final figures (``train_loss``, ``train_loss_mean``, ``eval_loss``, ...) are
logged once by the stage runner. Trainer's own end-of-training summary (``train_loss`` = the mean over the whole
run, ``train_runtime``, ``total_flos``, ...) is not a curve: its mean loss becomes ``train/loss_mean`` and its
timings are left to the stage's ``train_seconds`` / ``samples_per_second``.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import TrainerCallback

# Trainer log keys -> the project's curve names (everything else: eval_X -> eval/X, X -> train/X).
CURVE_NAMES = {"loss": "train/loss", "train_loss": "train/loss_mean", "eval_loss": "eval/loss"}
# Per-call timings and counters of Trainer's logs: single points, not curves.
NOT_CURVES = frozenset({"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos",
                        "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"})


def curve_name(key: str) -> str | None:
    """The MLflow name of a Trainer log key (None: not logged as a curve)."""
    if key in NOT_CURVES:
        return None
    if key in CURVE_NAMES:
        return CURVE_NAMES[key]
    if key.startswith("eval_"):
        return "eval/" + key.removeprefix("eval_")
    return "train/" + key.removeprefix("train_")


class MlflowMetricsCallback(TrainerCallback):
    """Log every numeric value of Trainer's log events at its global step (loss, lr, grad norm, eval loss).

    Trainer's own MLflowCallback opens and closes runs itself; this one only writes into the run the stage
    already opened, so the curves land in the stage's nested run.
    """

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        import mlflow

        if not state.is_world_process_zero or not logs:
            return
        metrics = {
            name: float(value)
            for key, value in logs.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and (name := curve_name(key)) is not None
        }
        if metrics:
            mlflow.log_metrics(metrics, step=state.global_step)


def mlflow_logger(prefix: str = "dpo/"):
    """A train_dpo callback that logs each logged row to the active MLflow run at its step."""
    import mlflow

    def log(event: str, step: int, values: dict[str, Any]) -> None:
        if event == "log":
            mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in values.items() if k != "step"}, step=step)

    return log
