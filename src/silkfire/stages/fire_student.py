"""Stage `fire_student`: FIRE's student (FIRE-LLaVA), SFT of the foundation's model on the student turns of the
gated training dialogues plus a share of world SFT records (silkfire.fire.role_training)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from silkfire.fire.role_training import role_config, role_summary, run_role
from silkfire.stages import Dep, Out

PARAMS = (
    "fire.seed", "fire.sft.student", "fire.sft.student_turns", "fire.sft.val_fraction", "fire.sft.mix_sft",
    "fire.sft.mix_families", "fire.sft.mix_family_weights", "fire.sft.max_length",
    "fire.dialogues.stop_score", "fire.dialogues.families", "fire.dialogues.source", "fire.dialogues.published",
    "runtime", "tracking.log_model",
    "paths.world", "paths.reports", "paths.fire", "paths.sft", "paths.fire_student", "paths.metrics",
)
DEPS = (
    Dep("${paths.fire}/dialogues"),
    Dep("${paths.reports}/validate_dialogues/verdict.json",
        "the verdict (md5 of clean copies): never train on failed data"),
    Dep("${paths.reports}/validate/verdict.json",
        "the world gate's verdict on the world records mixed in (fire.sft.mix_sft)"),
    Dep("${paths.world}"),
    Dep("${paths.sft}"),
)
OUTS = (
    Out("${paths.fire}/sft/student",
        note="its SFT sets: train.jsonl, val.jsonl"),
    Out("${paths.fire_student}", persist=True,
        note="kept across repro: fire.sft.student.resume=auto continues a killed run's checkpoints"),
)
CURVE_NAMES = ("fire_student",)  # metrics/curves/<name>.{csv,png}


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    return run_role(cfg, root, "student")


def summary(metrics: dict[str, Any]) -> str:
    return role_summary(metrics)


def check(cfg: DictConfig) -> None:
    """Parse the typed settings this stage reads (silkfire.stages.runner.check_config: before any stage runs)."""
    role_config(cfg, "student")
