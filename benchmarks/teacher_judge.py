"""How well does the trained FIRE teacher judge? Its agreement with the oracle judge on a workspace's records (issue 18).

    .venv/bin/python benchmarks/teacher_judge.py --root /path/to/workspace [--limit 400]

Needs a workspace where both branches ran (`silkfire run "pipeline.branches=[silkie,fire]"`): the silkie branch's
oracle-annotated records (``<paths.feedback>/annotated.jsonl``) and the FIRE branch's teacher
(``<paths.fire_teacher>/model``). The same records, annotations removed, are judged again by

- ``trained``: the trained FIRE teacher (silkfire.vlfeedback.teacher_judge, the instruction it was trained with);
- ``fire_oracle``: the world's rule-based FIRE teacher, the ceiling a teacher trained on its turns could reach;

and each is compared with the VLFeedback oracle's ratings (the mean of its aspects, the score pairs are built
from): pairwise accuracy over the completion pairs the oracle orders (a judge tie counts 1/2), Spearman's rho,
the share of replies without a score. The sampled prompts come from the world's *train* scenes (what the
annotate stage rates), which the teacher's own training dialogues also drew from: this measures the judge on the
distribution it would judge in the pipeline, not generalisation to new scenes.

Prints a table and writes the figures, the machine and the commit to
``benchmarks/results/teacher_judge-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the workspace (params.yaml, data, models)")
    parser.add_argument("--limit", type=int, default=None, help="the first N annotated records (default: all)")
    parser.add_argument("--judges", default="trained,fire_oracle")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--note", default="", help="provenance to keep with the figures (which run's files)")
    args = parser.parse_args(argv)

    from silkfire.artefacts import feedback_image_root
    from silkfire.config import load_params
    from silkfire.vlfeedback.judges import make_judge
    from silkfire.vlfeedback.teacher_judge import agreement
    from silkfire.io import read_records

    root = args.root.resolve()
    cfg = load_params(root)
    annotated_file = root / cfg.paths.feedback / "annotated.jsonl"
    teacher_dir = root / cfg.paths.fire_teacher / "model"
    for needed in (annotated_file, teacher_dir):
        if not needed.exists():
            raise SystemExit(f"{needed}: missing; run both branches first "
                             "(silkfire run \"pipeline.branches=[silkie,fire]\")")
    reference = list(read_records(annotated_file))[:args.limit]
    bare = [{**record, "completions": [{k: v for k, v in c.items() if k != "annotations"}
                                       for c in record["completions"]]} for record in reference]
    teachers = {
        "trained": {"kind": "trained", "path": str(teacher_dir), "batch_size": args.batch_size,
                    "max_new_tokens": 48, "instruction": str(cfg.fire.sft.teacher_instruction)},
        "fire_oracle": {"kind": "oracle"},
    }
    results: dict[str, Any] = {}
    for name in args.judges.split(","):
        judge = make_judge({"kind": "fire_teacher", "teacher": teachers[name]}, world_dir=root / cfg.paths.world,
                           root=root)
        started = time.perf_counter()
        judged = judge.annotate(bare, image_root=feedback_image_root(cfg, root))
        counts = judge.metrics()
        results[name] = {**agreement(reference, judged), "seconds": round(time.perf_counter() - started, 1),
                         "unparsable_share": counts["judge_unparsable"] / max(counts["judge_completions"], 1)}

    report = {"note": args.note, "records": len(reference), "annotated_file": str(annotated_file), "teacher": str(teacher_dir),
              "seed": int(cfg.seed), "results": results, "git_commit": git("rev-parse", "HEAD"),
              "workspace_commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                                 text=True, check=False).stdout.strip(),
              "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu_count": os.cpu_count(),
              "load_avg": os.getloadavg(), "python": platform.python_version(), "platform": platform.platform()}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"teacher_judge-{time.strftime('%Y-%m-%dT%H%MZ', time.gmtime())}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"{len(reference)} records of {annotated_file}; agreement with the VLFeedback oracle:")
    print(f"{'judge':<12} {'pairs':>6} {'pairwise acc':>12} {'judge ties':>10} {'spearman':>9} {'no score':>9} "
          f"{'seconds':>8}")
    for name, row in results.items():
        print(f"{name:<12} {row['pairs']:>6.0f} {row['pairwise_accuracy']:>12.3f} {row['judge_ties']:>10.3f} "
              f"{row['spearman']:>9.3f} {row['unparsable_share']:>9.3f} {row['seconds']:>8.1f}")
    print(f"raw: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
