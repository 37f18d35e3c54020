"""No training on data whose gate did not pass it, however the stage is run (`silkfire run`, `dvc repro`,
`silkfire stage NAME`, a notebook calling ``run``).

The gate stages (`validate`, `validate_feedback`, `pairs`, `validate_dialogues`) write their verdict next to their
report: ``<reports>/<gate>/verdict.json`` = ``{"gate", "success", "policy", "files": {path: md5}}``, where
``files`` are the bytes the verdict vouches for: every file the gate validated and, under policy ``filter``, every
clean copy it wrote (what later stages read instead). A failed gate records ``success: false`` before it stops.

A training stage (`sft`, `dpo`, `fire_student`, `fire_teacher`) calls :func:`require_passed` before it loads
anything: for each gate its input went through (:func:`requirements`), the verdict must exist, say ``success:
true`` and vouch for the exact bytes of the file the stage is about to read (the gate's clean copy under
``filter``, else the file itself). Otherwise :class:`GateNotPassed` names the gate, the file and the command to
run. Under policy ``filter`` a gate passes by quarantining the bad rows, so training reads only the rows that
passed; a gate that failed even so (a problem rows cannot fix, too many bad rows) stops training like under ``fail``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

VERDICT = "verdict.json"


class GateNotPassed(RuntimeError):
    """A training stage's input has no passing verdict of its gate for its current bytes."""


@dataclass(frozen=True)
class Requirement:
    """One gate a stage's input must have passed: the gate stage, its report folder, the files the stage reads."""

    gate: str
    report_dir: Path
    files: tuple[Path, ...]


def _key(path: Path, root: Path) -> str:
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(resolved)


def record_verdict(report_dir: str | Path, results: Iterable[Any], root: str | Path, gate: str) -> Path:
    """Write ``<report_dir>/verdict.json`` for one gate run (its :class:`~silkfire.quality.report.GateResult` s):
    success, policy and the md5 of every validated file and clean copy."""
    from silkfire.io import file_digest, write_json

    report_dir, root = Path(report_dir), Path(root)
    results = list(results)
    files: dict[str, str] = {}
    for result in results:
        for table in result.data_tables:
            for path in (Path(table.source), Path(table.clean_path) if table.clean_path else None):
                if path is not None and path.is_file():
                    files[_key(path, root)] = file_digest(path)
    verdict = {"gate": gate, "success": all(result.success for result in results),
               "policy": ",".join(sorted({str(result.policy) for result in results})), "files": files}
    write_json(report_dir / VERDICT, verdict)
    return report_dir / VERDICT


def problem(requirement: Requirement, root: str | Path) -> str | None:
    """Why ``requirement`` is not met (None when it is)."""
    from silkfire.io import file_digest

    where = requirement.report_dir / VERDICT
    run = f"run the gate first: `silkfire stage {requirement.gate}` (or `silkfire run`, `dvc repro`)"
    if not where.is_file():
        return f"no verdict of the {requirement.gate} gate ({where} is missing): {run}"
    try:
        verdict = json.loads(where.read_text(encoding="utf-8"))
        files = dict(verdict["files"])
        success = verdict["success"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"the {requirement.gate} gate's verdict {where} cannot be read ({error}): {run}"
    if success is not True:
        return (f"the {requirement.gate} gate failed (policy {verdict.get('policy')}; report: "
                f"{requirement.report_dir / 'report.txt'}): fix the data and run `silkfire stage {requirement.gate}` "
                "again")
    for path in requirement.files:
        key = _key(path, root)
        if not Path(path).is_file():
            return f"{path} is missing (the {requirement.gate} gate checked {sorted(files) or 'no file'})"
        if key not in files:
            return (f"the {requirement.gate} gate did not check {path} (it checked {sorted(files)}): {run}")
        if file_digest(path) != files[key]:
            return f"{path} changed after the {requirement.gate} gate checked it: {run}"
    return None


def require(requirements: Sequence[Requirement], root: str | Path, stage: str) -> None:
    """Raise :class:`GateNotPassed` naming every unmet requirement of ``stage``."""
    problems = [text for text in (problem(item, root) for item in requirements) if text is not None]
    if problems:
        raise GateNotPassed(f"{stage}: refusing to train on data that did not pass its quality gate:\n  "
                            + "\n  ".join(problems))


def requirements(cfg: DictConfig, root: Path, stage: str) -> list[Requirement]:
    """The gates a training stage's inputs went through, and the exact files it reads."""
    from silkfire.artefacts import PAIRS_GATE, gated_dialogues, gated_feedback, gated_file, gated_pairs
    from silkfire.artefacts import dialogue_report_dir as dialogue_reports
    from silkfire.artefacts import feedback_report_dir as feedback_reports
    from silkfire.artefacts import world_report_dir as world_reports

    if stage == "sft":
        return [Requirement("validate", world_reports(cfg, root),
                            (gated_file(cfg, root, "train.jsonl"), gated_file(cfg, root, "val.jsonl")))]
    if stage == "dpo":
        return [Requirement("validate_feedback", feedback_reports(cfg, root), (gated_feedback(cfg, root),)),
                Requirement("pairs", root / cfg.paths.reports / PAIRS_GATE, (gated_pairs(cfg, root),))]
    if stage in ("fire_student", "fire_teacher"):
        needed = [Requirement("validate_dialogues", dialogue_reports(cfg, root),
                              (gated_dialogues(cfg, root, "train"),))]
        if stage == "fire_student" and float(cfg.fire.sft.mix_sft) > 0:  # world records mixed into its set
            needed.append(Requirement("validate", world_reports(cfg, root), (gated_file(cfg, root, "train.jsonl"),)))
        return needed
    raise ValueError(f"no gate requirements declared for stage {stage!r} (known: sft, dpo, fire_student, "
                     "fire_teacher)")


def require_passed(cfg: DictConfig, root: Path, stage: str) -> None:
    """What a training stage calls first: its inputs' gates passed on their current bytes (module docstring)."""
    require(requirements(cfg, root, stage), root, stage)
