"""One callback protocol for every trainer: SFT (on transformers' Trainer) and DPO (its own loop) call the same
functions, so a logger, a progress hook or a test's "kill me here" is written once (issue 15, one training stack).

A callback is ``callback(event, step, values)``:

- ``"log"``: a logged row at optimizer step ``step``; ``values`` are its metrics. SFT's keys are the project's curve
  names (``train/loss``, ``eval/loss``, ``train/learning_rate``; :func:`curve_name`), DPO's its own row (``loss``,
  ``reward_accuracy``, ...; the MLflow sink prefixes them ``dpo/``);
- ``"step"``: after every optimizer step (DPO: that step's metrics; SFT: none);
- ``"save"``: a checkpoint was written; ``values["checkpoint"]`` is its folder.

Raising :class:`TrainingStopped` (or anything) stops training as a kill would: the checkpoints written so far stay.
Under ``accelerate launch`` every process calls its callbacks; the caller adds process-0-only ones on process 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

Callback = Callable[[str, int, dict[str, Any]], None]
EVENTS = ("log", "step", "save")

# Trainer log keys -> the project's curve names (everything else: eval_X -> eval/X, X -> train/X).
CURVE_NAMES = {"loss": "train/loss", "train_loss": "train/loss_mean", "eval_loss": "eval/loss"}
# Per-call timings and counters of Trainer's logs: single points, not curves.
NOT_CURVES = frozenset({"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos",
                        "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"})


class TrainingStopped(RuntimeError):
    """Raised by a callback to stop training (tests simulate a killed run with it)."""


def curve_name(key: str) -> str | None:
    """The curve name of a Trainer log key (None: a timing, not a curve).

    Trainer's end-of-training summary (``train_loss`` = the mean over the whole run) becomes ``train/loss_mean``;
    its timings are left to the stage's ``train_seconds`` / ``samples_per_second``."""
    if key in NOT_CURVES:
        return None
    if key in CURVE_NAMES:
        return CURVE_NAMES[key]
    if key.startswith("eval_"):
        return "eval/" + key.removeprefix("eval_")
    return "train/" + key.removeprefix("train_")


def finite_numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The entries MLflow can log: finite ints and floats (not booleans), as floats."""
    return {key: float(value) for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


def curve_values(logs: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a Trainer log event under their curve names."""
    return {name: value for key, value in finite_numbers(logs).items() if (name := curve_name(key)) is not None}


def trainer_bridge(callbacks: Sequence[Callback]) -> Any:
    """A transformers ``TrainerCallback`` that calls ``callbacks`` with this module's events."""
    from transformers import TrainerCallback

    class Bridge(TrainerCallback):
        def _emit(self, event: str, step: int, values: dict[str, Any]) -> None:
            for callback in callbacks:
                callback(event, step, values)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            if logs and (values := curve_values(logs)):
                self._emit("log", state.global_step, values)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._emit("step", state.global_step, {})

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self._emit("save", state.global_step, {"checkpoint": str(checkpoint)})

    return Bridge()
