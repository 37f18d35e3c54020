"""Figures logged to MLflow: training curves and per-subtask benchmark bars."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on pipeline machines
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: Sequence[Mapping[str, Any]], title: str = "SFT") -> Any:
    """Loss (train and eval) and learning rate against the optimiser step."""
    plt = _pyplot()
    fig, (loss_ax, lr_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, label in (("loss", "train loss"), ("eval_loss", "eval loss")):
        points = [(row["step"], row[key]) for row in history if row.get(key) not in (None, "")]
        if points:
            steps, values = zip(*points)
            loss_ax.plot(steps, [float(v) for v in values], marker="o" if key == "eval_loss" else None, label=label)
    loss_ax.set(xlabel="step", ylabel="loss", title=f"{title}: loss")
    loss_ax.legend()
    lr_points = [(row["step"], row["learning_rate"]) for row in history if row.get("learning_rate") not in (None, "")]
    if lr_points:
        steps, values = zip(*lr_points)
        lr_ax.plot(steps, [float(v) for v in values])
    lr_ax.set(xlabel="step", ylabel="learning rate", title=f"{title}: schedule")
    fig.tight_layout()
    return fig


def subtask_bars(scores: Mapping[str, Mapping[str, Any]], title: str = "MME-style subtask scores") -> Any:
    """Grouped bars: one group per subtask, one bar per model (e.g. base vs SFT), chance level marked."""
    plt = _pyplot()
    models = list(scores)
    subtasks = sorted({name for result in scores.values() for name in result["subtasks"]})
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(subtasks)), 4))
    width = 0.8 / max(len(models), 1)
    for offset, model in enumerate(models):
        values = [scores[model]["subtasks"].get(name, {}).get("score", 0.0) for name in subtasks]
        ax.bar([i + offset * width for i in range(len(subtasks))], values, width=width, label=model)
    ax.axhline(75, color="grey", linestyle="--", linewidth=1, label="chance (~75)")
    ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(subtasks))], subtasks, rotation=20)
    ax.set(ylabel="score (0-200)", ylim=(0, 200), title=title)
    ax.legend()
    fig.tight_layout()
    return fig


CURVES_DIR = "curves"  # under paths.metrics: the DVC plots directory (dvc.yaml's top-level `plots`)


def publish_curves(history_csv: Path, figure: Any, metrics_dir: Path, name: str) -> None:
    """A training stage's curves, for MLflow and DVC at once: the history CSV and the figure logged under the
    run's `curves/` (`<name>_curves.png`) and written as `<metrics_dir>/curves/<name>.csv` / `.png`. dvc.yaml plots
    that directory, so a branch that has not run yet is simply absent (no missing-file warning), and the PNG renders
    offline where the CSV's Vega chart needs its scripts from the network."""
    import mlflow

    curves = metrics_dir / CURVES_DIR
    curves.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(history_csv, curves / f"{name}.csv")
    mlflow.log_artifact(str(history_csv), artifact_path="curves")
    publish_figure(figure, f"curves/{name}_curves.png", curves / f"{name}.png")


def publish_figure(figure: Any, artifact_file: str, dvc_file: Path) -> None:
    """A figure as an MLflow artefact of the active run and as a PNG under metrics/ (a DVC image plot: `dvc plots
    show` embeds it as an <img>, which renders without network, unlike its Vega charts)."""
    import mlflow

    dvc_file.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(dvc_file, dpi=100)
    mlflow.log_figure(figure, artifact_file)
    _pyplot().close(figure)

