"""Same figures before and after a refactor (issue 15's acceptance): the smoke-scale run of both branches at two
commits, compared output by output.

    .venv/bin/python benchmarks/same_figures.py BEFORE AFTER [--keep DIR]

Each commit is cloned into a scratch folder and run with this checkout's virtual environment
(`silkfire run experiment=smoke` + the branch smoke test's tiny settings, tests/stages/test_branch_smoke.py SMOKE; its
own `src/` first on the path). Then compared: every `metrics/*.json` (timings, run ids and MLflow model ids left out),
the sha256 of every trained model's weights, of the branches' data files, and every training curve in the MLflow
store (name, points, sum). Prints what differs; exit status 1 when anything does. Training is deterministic on the
CPU, so a refactor that changes no computation shows no difference at all.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VOLATILE = ("second", "wall", "time", "elapsed", "per_second", "run_id", "model_id", "model_uri", "mlflow")


def stable(value: Any) -> Any:
    """A metrics file without what differs between any two runs (timings, run and model ids)."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if not any(word in k for word in VOLATILE)}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def outputs(workspace: Path) -> dict[str, Any]:
    """Everything compared, keyed by what it is."""
    found: dict[str, Any] = {}
    for path in sorted((workspace / "metrics").rglob("*.json")):
        found[f"metrics {path.relative_to(workspace)}"] = stable(json.loads(path.read_text(encoding="utf-8")))
    for pattern in ("models/*/model/model.safetensors", "data/feedback/*.jsonl", "data/fire/*.jsonl"):
        for path in sorted(workspace.glob(pattern)):
            found[f"sha256 {path.relative_to(workspace)}"] = sha256(path)
    for database in workspace.glob("mlruns/*.db"):
        with sqlite3.connect(database) as connection:
            rows = connection.execute(
                "select r.name, m.key, count(*), round(sum(m.value), 6) from metrics m join runs r "
                "on r.run_uuid = m.run_uuid where m.key like 'train/%' or m.key like 'eval/%' or m.key like 'dpo/%' "
                "group by r.name, m.key")
            for stage, key, points, total in rows:
                found[f"curve {stage} {key}"] = [points, total]
    return found


def run(commit: str, scratch: Path, overrides: list[str]) -> Path:
    workspace = scratch / commit
    subprocess.run(["git", "clone", "-q", str(ROOT), str(workspace)], check=True)
    subprocess.run(["git", "-C", str(workspace), "checkout", "-q", commit], check=True)
    env = {**os.environ, "PYTHONPATH": str(workspace / "src"), "SILKFIRE_ROOT": str(workspace)}
    log = workspace / "run.log"
    with log.open("w") as handle:
        done = subprocess.run([str(Path(sys.executable).parent / "silkfire"), "run", *overrides], cwd=workspace,
                              env=env, stdout=handle, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        raise SystemExit(f"{commit}: the run failed (exit {done.returncode}); see {log}")
    return workspace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--keep", type=Path, default=None, help="keep both workspaces in this folder")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from tests.stages.test_branch_smoke import SMOKE

    overrides = ["experiment=smoke", *SMOKE]
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="same-figures-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        before, after = (outputs(run(commit, scratch, overrides)) for commit in (args.before, args.after))
    finally:
        if args.keep is None:
            shutil.rmtree(scratch, ignore_errors=True)
    differ = sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
    for key in differ:
        print(f"DIFFERS {key}:\n  {args.before}: {before.get(key)}\n  {args.after}: {after.get(key)}")
    kinds = {kind: sum(key.startswith(kind) for key in before) for kind in ("metrics", "sha256", "curve")}
    print(f"{args.before} vs {args.after}: {len(before)} outputs compared ({kinds['metrics']} metrics files, "
          f"{kinds['sha256']} weight and data files, {kinds['curve']} curves): "
          + ("identical" if not differ else f"{len(differ)} differ"))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
