"""Stage `generate`: render the shapes world (images, scene graphs, instructions, held-out benchmarks)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from silkfire.stages import Out

PARAMS = ("world", "paths.world")  # world.seed, not the global seed: every pipeline seed sees the same world
DEPS = ()
OUTS = (
    Out("${paths.world}"),
)


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    from silkfire.world import WorldConfig, generate_world

    out_dir = root / cfg.paths.world
    if out_dir.exists():  # a partial earlier attempt must not leak stale files into the new version
        shutil.rmtree(out_dir)
    counts = generate_world(WorldConfig.from_mapping(cfg.world), out_dir)
    # Totals only: the full breakdown (families, categories, fallbacks) stays in manifest.json.
    files = {name: n for name, n in counts["files"].items() if name.endswith(".jsonl")}
    return {"scenes": dict(counts["scenes"]), "records": files}


def summary(metrics: dict[str, Any]) -> str:
    scenes = sum(metrics["scenes"].values())
    records = sum(n for name, n in metrics["records"].items() if name != "scenes.jsonl")
    return f"scenes={scenes} records={records}"


def check(cfg: DictConfig) -> None:
    """Parse the typed settings this stage reads (silkfire.stages.runner.check_config: before any stage runs)."""
    from silkfire.world import WorldConfig

    WorldConfig.from_mapping(cfg.world)
