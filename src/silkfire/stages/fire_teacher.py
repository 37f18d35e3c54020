"""Stage `fire_teacher`: FIRE's teacher (FD-LLaVA), SFT of the foundation's model on the teacher turns of the gated
training dialogues: question + ground truth + instruction + student response -> "Score: N.\\nFeedback: ..."
(silkfire.fire.role_training)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from silkfire.fire.role_training import role_config, role_summary, run_role
from silkfire.stages import Dep, Out

PARAMS = (
    "fire.seed", "fire.sft.teacher", "fire.sft.teacher_instruction", "fire.sft.val_fraction", "fire.sft.max_length",
    "fire.dialogues.source", "fire.dialogues.published", "runtime", "tracking.log_model",
    "paths.world", "paths.reports", "paths.fire", "paths.sft", "paths.fire_teacher", "paths.metrics",
)
DEPS = (
    Dep("${paths.fire}/dialogues"),
    Dep("${paths.reports}/validate_dialogues/verdict.json",
        "the verdict (md5 of clean copies): never train on failed data"),
    Dep("${paths.world}"),
    Dep("${paths.sft}"),
)
OUTS = (
    Out("${paths.fire}/sft/teacher",
        note="its SFT sets: train.jsonl, val.jsonl"),
    Out("${paths.fire_teacher}", persist=True,
        note="kept across repro: fire.sft.teacher.resume=auto continues a killed run's checkpoints"),
)
CURVE_NAMES = ("fire_teacher",)  # metrics/curves/<name>.{csv,png}


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    return run_role(cfg, root, "teacher")


def summary(metrics: dict[str, Any]) -> str:
    return role_summary(metrics)


def check(cfg: DictConfig) -> None:
    """Parse the typed settings this stage reads (silkfire.stages.runner.check_config: before any stage runs)."""
    role_config(cfg, "teacher")
