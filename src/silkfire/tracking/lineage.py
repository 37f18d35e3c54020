"""Lineage facts from DVC: the content digests that dvc.lock records for each stage output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DVC_LOCK = "dvc.lock"


def read_lock(root: Path) -> dict[str, Any]:
    """dvc.lock, with the stages of the branch pipelines' locks (pipelines/<branch>/dvc.lock) merged in: stage
    names are global and branch stages run with `wdir: ../..`, so their paths are root-relative too."""
    data = _load_lock(root / DVC_LOCK)
    for branch_lock in sorted((root / "pipelines").glob("*/" + DVC_LOCK)):
        data.setdefault("stages", {}).update(_load_lock(branch_lock).get("stages") or {})
    return data


def _load_lock(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def output_digest(root: Path, out_path: str) -> str | None:
    """The md5 DVC recorded for an output path (a directory digest ends in '.dir'), or None if unknown."""
    wanted = Path(out_path).as_posix().rstrip("/")
    for stage in read_lock(root).get("stages", {}).values():
        for out in stage.get("outs", []):
            if Path(out["path"]).as_posix().rstrip("/") == wanted:
                return out.get("md5")
    return None


def stage_digests(root: Path, stage: str) -> dict[str, str]:
    """{output path: md5} of one stage as recorded in dvc.lock (empty if it never ran)."""
    entry = read_lock(root).get("stages", {}).get(stage, {})
    return {out["path"]: out.get("md5", "") for out in entry.get("outs", [])}
