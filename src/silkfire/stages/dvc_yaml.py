"""The dvc.yaml files, generated from the stage registry (issue 15): one place declares a stage.

    python -m silkfire.stages.dvc_yaml            # exit 1 and name the dvc.yaml files that differ from the registry
    python -m silkfire.stages.dvc_yaml --write    # regenerate them (`make dvc-yaml`)

What each stage entry holds, and where it comes from:

- ``cmd``: ``silkfire stage <name>``; ``wdir: ../..`` for a branch stage (its file is pipelines/<branch>/dvc.yaml);
- ``deps``: the module's ``DEPS`` (data), then its code: the import closure (silkfire.stages.code_deps);
- ``params``: the module's ``PARAMS``, the exact params.yaml keys it reads;
- ``outs``: the module's ``OUTS``, then by convention ``metrics/<stage>.json`` (``cache: false``) and, for each name
  in ``CURVE_NAMES``, ``metrics/curves/<name>.csv`` and ``.png``;
- ``metrics``: ``metrics/summary/<stage>.json`` for a stage with a row in silkfire.reporting.METRICS_TABLE.

The stage order is silkfire.stages.STAGES / BRANCHES (the Prefect flow reads the same), and the root file ends with
the top-level ``plots`` of the curves directory. tests/stages/test_dvc_pipeline.py fails while a committed dvc.yaml
differs from what this module generates: edit the stage module, not the YAML.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from silkfire.stages import BRANCHES, STAGES, Dep, Out

GENERATED = """# Generated from the stage registry (src/silkfire/stages/<name>.py: PARAMS, DEPS, OUTS, CURVE_NAMES):
# edit there, then `make dvc-yaml` (python -m silkfire.stages.dvc_yaml --write). A test fails while this differs.
"""
ROOT_HEADER = """# Silkfire pipeline, the foundation. Each stage runs `silkfire stage <name>` (the stage module, the single
# implementation the Prefect flow runs too), depends on its data, its import closure and the exact params.yaml
# keys it reads, and writes a small metrics file. params.yaml is composed from conf/ (Hydra):
# `dvc exp run -S train.max_steps=100` recomposes it.
"""
BRANCH_HEADERS = {
    "silkie": """# VLFeedback / Silkie branch (pipeline.branches: [silkie]): policy pool -> judge -> vlfeedback gate -> pairs
# (+ pairs gate) -> DPO from the foundation's SFT model -> SFT vs DPO on the MME-style and MMHal-style world sets.
""",
    "fire": """# FIRE branch (pipeline.branches: [fire]): student x teacher dialogues on the world's questions -> FIRE gate
# -> student and teacher SFT from the foundation's SFT model (one stage each) -> FIRE-Bench (fixed and free
# dialogue).
""",
}
BRANCH_COMMON = """# `dvc repro pipelines/{branch}/dvc.yaml` after the foundation (`dvc repro`); `silkfire run
# experiment={experiment}` runs foundation + branch in the Prefect flow. wdir ../..: every path and param key reads
# from the project root; `vars` loads the root params.yaml so ${{paths.*}} interpolate.
vars:
  - ../../params.yaml
"""
EXPERIMENTS = {"silkie": "silkie", "fire": "fire_llava"}
PLOTS = """
# Every training stage's curves (sft here, dpo and fire_student/fire_teacher once their branch has run): one
# directory, so `dvc plots show` renders what exists and warns about nothing. Each stage writes <name>.csv (a Vega
# chart of the loss, which needs network for its scripts) and <name>.png (the same curves, rendered offline).
plots:
  - ${paths.metrics}/curves:
      x: step
      y: loss
"""
MARKER = "# code: the stage's import closure (silkfire.stages.code_deps)"


def _item(path: str, note: str = "", flags: dict[str, Any] | None = None) -> list[str]:
    comment = f"  # {note}" if note else ""
    if not flags:
        return [f"      - {path}{comment}"]
    lines = [f"      - {path}:{comment}"]
    lines += [f"          {key}: {str(value).lower()}" for key, value in flags.items()]
    return lines


def _flags(out: Out) -> dict[str, Any]:
    return {**({"cache": False} if not out.cache else {}), **({"persist": True} if out.persist else {})}


def stage_entry(stage: str, root: Path) -> list[str]:
    """The YAML lines of one stage (see the module docstring)."""
    from silkfire.reporting import METRICS_TABLE
    from silkfire.stages import branch_of
    from silkfire.stages.code_deps import code_deps
    from silkfire.stages.runner import stage_module

    module = stage_module(stage)
    deps: tuple[Dep, ...] = getattr(module, "DEPS", ())
    outs: tuple[Out, ...] = getattr(module, "OUTS", ())
    curves: tuple[str, ...] = getattr(module, "CURVE_NAMES", ())
    lines = [f"  {stage}:"]
    if branch_of(stage) is not None:
        lines.append("    wdir: ../..")
    lines += [f"    cmd: silkfire stage {stage}", "    deps:"]
    for dep in deps:
        lines += _item(dep.path, dep.note)
    lines.append(f"      {MARKER}")
    lines += [f"      - {path}" for path in code_deps(stage, root)]
    lines.append("    params:")
    lines += [f"      - {key}" for key in module.PARAMS]
    lines.append("    outs:")
    for out in outs:
        lines += _item(out.path, out.note, _flags(out))
    lines += _item(f"${{paths.metrics}}/{stage}.json", "", {"cache": False})
    for name in curves:
        lines += _item(f"${{paths.metrics}}/curves/{name}.csv", "plotted by the root dvc.yaml's top-level `plots`",
                       {"cache": False})
        lines += _item(f"${{paths.metrics}}/curves/{name}.png", "", {"cache": False})
    if stage in METRICS_TABLE:
        lines.append("    metrics:  # the row `dvc metrics show` prints (silkfire.reporting.METRICS_TABLE)")
        lines += _item(f"${{paths.metrics}}/summary/{stage}.json", "", {"cache": False})
    return lines


def generate(root: Path) -> dict[str, str]:
    """{dvc.yaml path relative to root: its text} for the foundation and every branch."""
    files = {"dvc.yaml": GENERATED + ROOT_HEADER + "stages:\n" + "\n\n".join(
        "\n".join(stage_entry(stage, root)) for stage in STAGES) + "\n" + PLOTS}
    for branch, stages in BRANCHES.items():
        header = GENERATED + BRANCH_HEADERS[branch] + BRANCH_COMMON.format(branch=branch,
                                                                           experiment=EXPERIMENTS[branch])
        files[f"pipelines/{branch}/dvc.yaml"] = header + "\nstages:\n" + "\n\n".join(
            "\n".join(stage_entry(stage, root)) for stage in stages) + "\n"
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the dvc.yaml files from the registry")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="project root (default: here)")
    args = parser.parse_args(argv)
    stale = []
    for relative, text in generate(args.root).items():
        path = args.root / relative
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(relative)
            if args.write:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    if stale and not args.write:
        print(f"{', '.join(stale)} differ from the stage registry: run `make dvc-yaml`", file=sys.stderr)
        return 1
    print(f"rewrote {', '.join(stale)}" if stale else "dvc.yaml files match the stage registry")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
