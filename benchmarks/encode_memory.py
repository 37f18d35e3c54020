"""Peak memory of encoding SFT training data at 1x and 4x the default world (issue 16 item 6), old path vs new.

    .venv/bin/python benchmarks/encode_memory.py [--scales 1 4]

Generates (in a child process) the default shapes world (params.yaml's `world`) with its train scenes times each
scale, and the default base model (params.yaml's `model`), in a temporary folder. Then, each in a fresh child, encodes the training
records the way the SFT stage reads them (every record, seed 0, params.yaml's `train.answer_style`):

- ``in_memory``: the records read into a list and ``encode_sft_records`` (every token row and image tensor in RAM:
  what the SFT stage did before);
- ``on_disk``: a ``RecordSelection`` streamed from the file into ``encode_sft_to_disk`` (token rows memory-mapped,
  images processed when read: what the stage does now).

Each child reads its peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) after loading the model (imports + model: the
same for both paths), resets the peak (``/proc/self/clear_refs``) and reads it again after encoding: the encode
peak, everything resident included, which the loading peak would otherwise hide. Also: the encode wall time
(indicative only on a loaded machine) and the sample count. Prints the table with the ratio 4x/1x of each path's
encode peak and whole-process peak (the target: on_disk <= 1.2) and writes the raw rows, the machine and the commit
to ``benchmarks/results/encode_memory-<UTC time>.json``. This process imports neither torch nor the package: Linux
gives a child the RSS peak of the process it was started from as its floor, which would hide a small figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("in_memory", "on_disk")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def reset_peak_rss() -> None:
    """Start a new peak from the current RSS (Linux: "5" resets VmHWM, which ru_maxrss reads)."""
    Path("/proc/self/clear_refs").write_text("5")


def child(path: str, world: Path, model: Path, answer_style: str) -> dict[str, Any]:
    """Encode ``world``'s training records along ``path``; the figures of this process."""
    from silkfire.models.loading import load_vlm

    _, processor = load_vlm(model, device="cpu")
    train = world / "train.jsonl"
    setup = peak_rss_bytes()
    reset_peak_rss()
    started = time.perf_counter()
    if path == "in_memory":
        from silkfire.io import read_records
        from silkfire.train.data import encode_sft_records, select_records, styled_answers

        records = styled_answers(select_records(read_records(train), None, None, 0), answer_style)
        data = encode_sft_records(records, processor, world, progress=False)
    else:
        from silkfire.train.data import RecordSelection, encode_sft_to_disk

        data = encode_sft_to_disk(RecordSelection(train, None, None, 0, answer_style=answer_style), processor, world,
                                  progress=False)
    seconds = time.perf_counter() - started
    encode = peak_rss_bytes()
    import torch

    return {"path": path, "samples": len(data), "encode_seconds": seconds, "peak_rss_setup": setup,
            "peak_rss_encode": encode, "peak_rss": max(setup, encode), "torch": torch.__version__}


def build_inputs(scratch: Path, scales: list[int], params: dict[str, Any]) -> None:
    """The default world at each scale of its train scenes (``world-<scale>x``), and the default base model
    (``model``)."""
    import dataclasses

    from silkfire.models.config import ModelConfig
    from silkfire.models.tiny_llava import build_tiny_llava
    from silkfire.world.config import WorldConfig
    from silkfire.world.build import generate_world
    from silkfire.world.texts import world_texts

    config = WorldConfig.from_mapping(params["world"])
    worlds = {scale: scratch / f"world-{scale}x" for scale in scales}
    for scale, folder in worlds.items():
        generate_world(dataclasses.replace(config, train_scenes=config.train_scenes * scale), folder, progress=False)
    build_tiny_llava(ModelConfig.from_mapping(params["model"]), world_texts(config), scratch / "model")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--answer-style", default="explained", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    if args.child:
        print(json.dumps(child(args.child, args.world, args.model, args.answer_style)))
        return 0
    if args.build:
        build_inputs(args.build, args.scales, params)
        return 0

    answer_style = params["train"]["answer_style"]
    scratch = Path(tempfile.mkdtemp(prefix="encode-memory-"))
    rows: list[dict[str, Any]] = []
    try:
        subprocess.run([sys.executable, __file__, "--build", str(scratch), "--scales", *map(str, args.scales)],
                       capture_output=True, check=True, cwd=ROOT)
        for scale in args.scales:
            for path in PATHS:
                done = subprocess.run([sys.executable, __file__, "--child", path, "--world",
                                       str(scratch / f"world-{scale}x"), "--model", str(scratch / "model"),
                                       "--answer-style", answer_style],
                                      capture_output=True, text=True, check=True, cwd=ROOT)
                rows.append({"scale": scale, **json.loads(done.stdout.strip().splitlines()[-1])})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    low, high = min(args.scales), max(args.scales)

    def ratio(path: str, key: str) -> float:
        at = {row["scale"]: row[key] for row in rows if row["path"] == path}
        return at[high] / at[low]

    ratios = {path: {key: ratio(path, key) for key in ("peak_rss_encode", "peak_rss")} for path in PATHS}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else ""
    report = {"rows": rows, f"peak_rss_ratio_{high}x_over_{low}x": ratios,
              "train_scenes_1x": params["world"]["train_scenes"], "answer_style": answer_style,
              "git_commit": commit, "cpu": cpu, "cpu_count": os.cpu_count(), "torch": rows[0]["torch"],
              "python": platform.python_version(), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    result = out / f"encode_memory-{time.strftime('%Y-%m-%dT%H%MZ', time.gmtime())}.json"
    result.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    mb = 1 << 20
    print(f"{'scale':>5} {'path':>9} {'samples':>8} {'setup peak MB':>13} {'encode peak MB':>14} "
          f"{'process peak MB':>15} {'encode s*':>9}")
    for row in rows:
        print(f"{row['scale']:>4}x {row['path']:>9} {row['samples']:>8} {row['peak_rss_setup'] / mb:>13.0f} "
              f"{row['peak_rss_encode'] / mb:>14.0f} {row['peak_rss'] / mb:>15.0f} {row['encode_seconds']:>9.1f}")
    for path in PATHS:
        print(f"{path}: {high}x / {low}x: encode peak {ratios[path]['peak_rss_encode']:.2f}, "
              f"process peak {ratios[path]['peak_rss']:.2f}")
    print("* encode wall time: indicative only (not measured on an idle machine)")
    print(f"raw: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
