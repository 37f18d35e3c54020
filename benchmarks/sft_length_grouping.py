"""SFT step speed of two settings of one train key, measured fairly (issue 16): by default with and without
length-grouped batches (train.group_by_length); ``--option dtype=float32,bfloat16`` compares CPU precisions.

    .venv/bin/python benchmarks/sft_length_grouping.py --root /path/to/workspace [--rounds 3] [--steps 60]
        [--option KEY=A,B]

Needs a workspace where the foundation's first stages ran (its gated world and base model: `silkfire run`, or
`dvc repro base`). Each round trains the default SFT recipe (params.yaml's `train`, seed 0) for ``--steps`` steps
twice, once random batches and once length-grouped (or once per value of ``--option``), in alternating order (round
1 the first value first, round 2 the second first, ...), each from the same base model in a fresh output folder, and reads Trainer's own timing of the training
loop (``train_seconds``: model load and encoding excluded on both sides alike). A round whose 1-minute load average
was above ``--max-load`` when it started is recorded and left out of the ratio. Also reported: the share of padding
positions in the batches each order makes. Prints the table and writes the raw rows, the load, the machine and the
commit to ``benchmarks/results/sft_length_grouping-<UTC time>.json``.

Not measured here: whether grouping changes the step at which the model leaves the chance plateau (that needs
`make plateau` with `train.group_by_length=true`); until then the option stays off.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def padding_share(order: list[int], lengths: list[int], batch_size: int) -> float:
    """Padding positions / all positions of the batches ``order`` makes (right padding to the batch's longest)."""
    padded = real = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start:start + batch_size]]
        padded += max(batch) * len(batch)
        real += sum(batch)
    return 1 - real / padded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="a workspace with the gated world and base model")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--max-load", type=float, default=2.5, help="1-min load above which a round is left out")
    parser.add_argument("--option", default="group_by_length=false,true",
                        help="KEY=A,B: the train key compared and its two values (baseline first)")
    args = parser.parse_args(argv)
    key, _, values = args.option.partition("=")
    import yaml

    first, second = (yaml.safe_load(value) for value in values.split(","))

    import torch

    from silkfire.artefacts import gated_file
    from silkfire.config import load_params
    from silkfire.models.loading import load_vlm
    from silkfire.train.data import encode_sft_records, length_grouped_passes, select_records, styled_answers
    from silkfire.train.sft import SFTConfig, train_sft

    root = args.root.resolve()
    cfg = load_params(root)
    train_file, val_file = gated_file(cfg, root, "train.jsonl"), gated_file(cfg, root, "val.jsonl")
    base = root / cfg.paths.base_model
    world = root / cfg.paths.world
    base_config = SFTConfig.from_mapping(cfg.train, seed=0, max_steps=args.steps, eval_steps=0, save_steps=0,
                                         progress=False, resume=False, max_eval_samples=64)

    from silkfire.io import read_records

    _, processor = load_vlm(base, device="cpu")
    records = styled_answers(select_records(read_records(train_file), base_config.families, base_config.max_samples,
                                            base_config.seed, base_config.family_weights), base_config.answer_style)
    lengths = [len(ids) for ids in encode_sft_records(records, processor, world, progress=False).input_ids]
    if key not in base_config.__dict__:
        parser.error(f"--option: {key!r} is not a train key")
    total = args.steps * base_config.batch_size
    random_order = [i for _ in range(total // len(lengths) + 1)
                    for i in torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()][:total]
    padding = {"random": padding_share(random_order, lengths, base_config.batch_size),
               "grouped": padding_share(length_grouped_passes(lengths, base_config.batch_size, total, 0), lengths,
                                        base_config.batch_size)}

    rows: list[dict[str, Any]] = []
    scratch = Path(tempfile.mkdtemp(prefix="sft-grouping-"))
    try:
        for round_index in range(args.rounds):
            sides = [first, second] if round_index % 2 == 0 else [second, first]
            for side in sides:
                load_before = os.getloadavg()[0]
                config = SFTConfig(**{**base_config.__dict__, key: side})
                result = train_sft(base, train_file, val_file, world, config, scratch / f"{round_index}-{side}")
                rows.append({"round": round_index, "side": side, "load_before": round(load_before, 2),
                             "load_after": round(os.getloadavg()[0], 2),
                             "train_seconds": result.metrics["train_seconds"],
                             "train_loss": result.metrics["train_loss"],
                             "counted": load_before <= args.max_load})
                shutil.rmtree(scratch / f"{round_index}-{side}", ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    ratios = []
    for round_index in range(args.rounds):
        pair = {row["side"]: row for row in rows if row["round"] == round_index}
        if all(row["counted"] for row in pair.values()):
            ratios.append(pair[first]["train_seconds"] / pair[second]["train_seconds"])
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else ""
    report = {"option": key, "values": [first, second], "steps": args.steps, "batch_size": base_config.batch_size, "rows": rows, "padding_share": padding,
              "speedup_median": statistics.median(ratios) if ratios else None,
              "speedup_min_max": [min(ratios), max(ratios)] if ratios else None,
              "rounds_counted": len(ratios), "git_commit": commit, "cpu": cpu, "cpu_count": os.cpu_count(),
              "threads": base_config.num_threads, "torch": torch.__version__, "python": platform.python_version(),
              "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if key == "group_by_length" else f"-{key}"
    path = out / f"sft_length_grouping-{time.strftime('%Y-%m-%dT%H%MZ', time.gmtime())}{suffix}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"{'round':>5} {'side':>8} {'load':>5} {'train s':>8} {'loss':>7}")
    for row in rows:
        print(f"{row['round']:>5} {str(row['side']):>8} {row['load_before']:>5.2f} {row['train_seconds']:>8.1f} "
              f"{row['train_loss']:>7.3f}{'' if row['counted'] else '  (load: left out)'}")
    print(f"padding share: random {padding['random']:.1%}, grouped {padding['grouped']:.1%}")
    if ratios:
        print(f"{key}={second} speed-up ({first} time / {second} time): median {report['speedup_median']:.2f}x "
              f"[{min(ratios):.2f}-{max(ratios):.2f}] over {len(ratios)} round(s)")
    print(f"raw: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
