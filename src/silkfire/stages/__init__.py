"""Pipeline stages: one module each, the single implementation that both `dvc repro` and the Prefect flow run.

Each stage module is the one place a stage is declared: `PARAMS` (the exact params.yaml keys it reads), `DEPS`
(its data inputs), `OUTS` (its outputs; its metrics file, curves and `dvc metrics` row are added by convention),
optionally `CURVE_NAMES` (the training curves it writes under metrics/curves/), `run(cfg, root) -> metrics` and
`summary(metrics) -> str` (one line for tables). The dvc.yaml files are generated from these declarations,
the order below and each stage's import closure (`make dvc-yaml`, silkfire.stages.dvc_yaml; a test fails while a
committed dvc.yaml differs from the generated one).

The foundation chain lives in the root `dvc.yaml` (what `dvc repro` runs). Each branch of the design (VLFeedback/
Silkie, FIRE) lives in `pipelines/<branch>/dvc.yaml` (stages with `wdir: ../..`, so paths read as from the root)
and starts from the foundation's outputs: `dvc repro pipelines/silkie/dvc.yaml` runs one, the flow runs the
branches named in `pipeline.branches` (an experiment file sets them, e.g. `experiment=silkie`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dep:
    """A data input of a stage in its dvc.yaml entry (``${paths.*}`` interpolate from params.yaml); ``note`` becomes
    the entry's comment. Code inputs are not declared: they are the stage's import closure (stages.code_deps)."""

    path: str
    note: str = ""


@dataclass(frozen=True)
class Out:
    """An output of a stage: ``cache=False`` (small files git or the workspace keeps), ``persist=True`` (kept across
    `dvc repro`: a training stage's checkpoints, for resume)."""

    path: str
    cache: bool = True
    persist: bool = False
    note: str = ""


# The foundation, in order.
STAGES: tuple[str, ...] = ("generate", "validate", "base", "sft", "evaluate", "register")

# Branches after `sft`, each in order. Stage names are global: `silkfire stage <name>` runs any of them.
BRANCHES: dict[str, tuple[str, ...]] = {
    "silkie": ("sample", "annotate", "validate_feedback", "pairs", "dpo", "evaluate_dpo", "register_dpo"),
    "fire": ("dialogues", "validate_dialogues", "fire_student", "fire_teacher", "fire_bench", "register_fire"),
}

ALL_STAGES: tuple[str, ...] = STAGES + tuple(stage for stages in BRANCHES.values() for stage in stages)


def branch_of(stage: str) -> str | None:
    """The branch a stage belongs to, None for a foundation stage."""
    return next((name for name, stages in BRANCHES.items() if stage in stages), None)


def dvc_file(stage: str) -> str:
    """The dvc.yaml (relative to the project root) that declares the stage."""
    branch = branch_of(stage)
    return "dvc.yaml" if branch is None else f"pipelines/{branch}/dvc.yaml"


def dvc_target(stage: str) -> str:
    """What to hand `dvc repro` for one stage."""
    return stage if branch_of(stage) is None else f"{dvc_file(stage)}:{stage}"


def pipeline_stages(branches: list[str] | tuple[str, ...] = ()) -> tuple[str, ...]:
    """The foundation followed by the named branches, in order."""
    unknown = [name for name in branches if name not in BRANCHES]
    if unknown:
        raise ValueError(f"unknown pipeline branch(es) {unknown}; branches are: {', '.join(BRANCHES)}")
    return STAGES + tuple(stage for name in branches for stage in BRANCHES[name])
