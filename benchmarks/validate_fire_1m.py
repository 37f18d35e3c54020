"""Benchmark: 1,000,000 FIRE-sized dialogues through the FIRE gate, side by side with a plain-Python peer.

    .venv/bin/python benchmarks/validate_fire_1m.py [--records 1000000] [--bad 20] [--keep DIR]

Generates FIRE-1M-like raw records (question ~20 words, 2-3 rounds, ~40 words per turn, "Score: N." or
"Score: N/10." teacher lines, ground truths that are numbers or words) into a temporary JSONL, plants ``--bad``
corrupted records, then times:

- silkfire: ``validate_fire`` (Arrow parses 16 MB blocks, a vectorised screen proves rows clean, the others go
  through the per-record rules; Great Expectations over the whole table, reports, Data Docs, profile), images
  skipped (``check_images=False``);
- peer: a plain loop over the same file (orjson + the same rules from ``silkfire.quality.fire``, sets for the
  duplicates), collecting failing lines only: no frame, no GX, no reports.

Both must find the planted corruptions. Prints wall and CPU times of both and the ratio silkfire / peer, and
writes them with the load averages (before/after each side), the machine and the commit to
``benchmarks/results/validate_fire_1m-<UTC time>.json`` (``--no-save``: print only).
Target (issue 16 item 5): 1M records <= 30 s and not slower than the peer, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
ROOT = Path(__file__).resolve().parents[1]

WORDS = (
    "the image shows a region near object left right top bottom corner colour shape large small next to behind "
    "front visible appears there which of these is most likely picture scene area label text chart value line "
    "bar axis figure person holding standing sitting wearing looking table building street sign road sky water "
    "tree window door car bus train plate food cup bottle book screen room wall floor light dark bright"
).split()
FEEDBACK = (
    "consider look again at carefully check your reasoning about the count relation between items try focus "
    "on what stands out you missed detail part answer should reflect observe closer read labels compare both "
    "sides recount think whether earlier step was wrong nearly there good effort"
).split()
ANSWERS = [str(n) for n in range(2, 100)] + [
    "giraffe", "umbrella", "bicycle", "orange", "purple", "kitchen", "stadium", "elephant", "airplane", "zebra",
]
SOURCES = ("coco", "gqa", "ocr_vqa", "textvqa", "vg", "docvqa", "chartqa", "ai2d", "dvqa", "scienceqa")


def sentence(rng: random.Random, vocab: list[str] | tuple[str, ...], words: int) -> str:
    return " ".join(rng.choices(vocab, k=words))


def make_pools(rng: random.Random, size: int = 4000) -> dict[str, list[str]]:
    """Pre-built texts (drawing 40 random words per turn for a million records would dominate the run)."""
    return {
        "question": [sentence(rng, WORDS, rng.randint(12, 28)).capitalize() + "?" for _ in range(size)],
        "thought": [sentence(rng, WORDS, rng.randint(30, 50)) for _ in range(size)],
        "feedback": [sentence(rng, FEEDBACK, rng.randint(30, 50)) for _ in range(size)],
    }


def fire_record(index: int, rng: random.Random, pools: dict[str, list[str]]) -> dict:
    rounds = rng.choice((2, 2, 3))
    answer = rng.choice(ANSWERS)
    wrong = [a for a in rng.sample(ANSWERS, 4) if a != answer]
    source = rng.choice(SOURCES)
    turns, scores = [], []
    for turn in range(rounds):
        last = turn == rounds - 1
        said = answer if last else wrong[turn]
        score = 10 if last else rng.randint(1, 7)
        turns.append({"role": "student", "type": "response",
                      "value": f"Thought: {rng.choice(pools['thought'])}\nAnswer: {said}\n"})
        score_text = f"{score}/10" if rng.random() < 0.02 else str(score)
        turns.append({"role": "teacher", "type": "feedback",
                      "value": f"Score: {score_text}.\nFeedback: {rng.choice(pools['feedback'])}\n"})
        scores.append(score)
    return {
        "image": f"{source}/images/{index:07d}.jpg",
        "question": {"role": "user", "value": rng.choice(pools["question"]) + f" (item {index})"},
        "conversations": turns,
        "groundtruth": {"role": "user", "value": answer},
        "source": source,
        "round": rounds,
        "score": scores,
    }


def corrupt(record: dict, kind: int) -> tuple[dict | str, str]:
    """One planted corruption; returns the record (or a broken line) and what must catch it."""
    record = {**record, "conversations": [dict(t) for t in record["conversations"]]}
    if kind == 0:
        record["conversations"][0]["role"], record["conversations"][1]["role"] = "teacher", "student"
        return record, "conversations__status"
    if kind == 1:
        record["round"] = record["round"] + 1
        return record, "round__turns"
    if kind == 2:
        record["conversations"][1]["value"] = "Score: 14.\nFeedback: fine\n"
        return record, "score__parsed"
    if kind == 3:
        record["conversations"][1]["value"] += f" The answer is {record['groundtruth']['value']}."
        return record, "feedback__leak"
    return json.dumps(record)[:80], "__json__"  # a write cut short


def generate(path: Path, records: int, bad: int, seed: int = 0) -> dict[int, str]:
    """Write ``records`` JSONL lines; return line -> the column that must flag it."""
    import orjson

    rng = random.Random(seed)
    pools = make_pools(rng)
    planted: dict[int, str] = {}
    bad_lines = set(random.Random(seed + 1).sample(range(1, records + 1), min(bad, records)))
    with path.open("wb") as out:
        for index in range(records):
            line = index + 1
            record = fire_record(index, rng, pools)
            if line in bad_lines:
                broken, column = corrupt(record, len(planted) % 5)
                planted[line] = column
                out.write((broken if isinstance(broken, str) else orjson.dumps(broken).decode()).encode() + b"\n")
            else:
                out.write(orjson.dumps(record) + b"\n")
    return planted


def peer(path: Path, cfg) -> set[int]:
    """The same rules as a plain loop: orjson per line, silkfire.quality.fire's rule functions, sets for dups."""
    import orjson

    from silkfire.quality import fire

    low, high = 1, 2048
    short = 2 * high - 1  # the gate's rule: shorter strings cannot exceed `high` tokens
    smin, smax = cfg.scores
    bad: set[int] = set()
    seen: set[tuple[str, str]] = set()
    with path.open("rb") as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                bad.add(line)
                continue
            if not isinstance(record, dict):
                bad.add(line)
                continue
            image, question, turns = record.get("image"), record.get("question"), record.get("conversations")
            gt, rounds, stored = record.get("groundtruth"), record.get("round"), record.get("score")
            if not (isinstance(image, str) and image.strip() and isinstance(question, dict)
                    and isinstance(turns, list) and isinstance(gt, dict) and isinstance(record.get("source"), str)
                    and type(rounds) is int and isinstance(stored, list)):
                bad.add(line)
                continue
            q_text, q_state = fire._dialog_text(question, "question")
            g_text, g_state = fire._dialog_text(gt, "groundtruth")
            structure, tokens, scores = fire._turns(turns, short, low, high)
            if q_state != "ok" or g_state != "ok" or structure != "ok" or tokens is not None:
                bad.add(line)
                continue
            if len(q_text) >= short and not low <= len(q_text.split()) <= high:
                bad.add(line)
                continue
            if rounds != len(scores) or not cfg.rounds[0] <= rounds <= cfg.rounds[1] or any(
                s is None or not smin <= s <= smax for s in scores
            ):
                bad.add(line)
                continue
            key = fire.leak_key(g_text, cfg)
            if key is not None and fire.leaks(turns, key) != "ok":
                bad.add(line)
                continue
            pair = (image, q_text)
            if pair in seen:
                bad.add(line)
            seen.add(pair)
    return bad


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the gate's worker processes)."""
    import resource

    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def save(raw: dict) -> Path:
    """``benchmarks/results/validate_fire_1m-<UTC>.json`` with the machine and the commit."""
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    mine = ["src/silkfire/quality", "benchmarks/validate_fire_1m.py"]
    dirty = bool(subprocess.run([*git, "status", "--porcelain", *mine], capture_output=True, text=True).stdout.strip())
    cpuinfo = Path("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")), "") if cpuinfo.is_file() else platform.processor()
    stamp = time.strftime("%Y-%m-%dT%H%MZ", time.gmtime())
    raw = {"date": stamp, "git_commit": commit, "git_dirty": dirty, "cpu_model": model, "cpu_count": os.cpu_count(),
           "python": platform.python_version(), "platform": platform.platform(), **raw}
    out = ROOT / "benchmarks" / "results" / f"validate_fire_1m-{stamp}.json"
    out.write_text(json.dumps(raw, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--bad", type=int, default=20, help="corrupted records planted in the file")
    parser.add_argument("--keep", type=Path, default=None, help="keep the JSONL and reports in this folder")
    parser.add_argument("--chunk-size", type=int, default=50_000, help="records per chunk on the per-record way")
    parser.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/*.json")
    args = parser.parse_args(argv)
    load = {"start": os.getloadavg()}

    from silkfire.quality.config import QualityConfig

    work = args.keep or Path(tempfile.mkdtemp(prefix="silkfire-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "fire.jsonl"
    sidecar = work / "planted.json"
    try:
        t0 = time.perf_counter()
        reuse = args.keep is not None and sidecar.is_file() and json.loads(sidecar.read_text())["records"] == args.records
        if reuse:  # --keep DIR of an earlier run with the same size: same seed, same file
            planted = {int(k): v for k, v in json.loads(sidecar.read_text())["planted"].items()}
        else:
            planted = generate(data, args.records, args.bad)
            sidecar.write_text(json.dumps({"records": args.records, "planted": planted}))
        gen_s = time.perf_counter() - t0
        size_mb = data.stat().st_size / 1e6
        print(f"{'reused' if reuse else 'generated'} {args.records:,} records ({size_mb:,.0f} MB) in {gen_s:.1f} s; "
              f"{len(planted)} planted")

        config = QualityConfig(check_images=False, chunk_size=args.chunk_size)
        load["peer_before"] = os.getloadavg()
        t0, c0 = time.perf_counter(), cpu_seconds()
        bad_peer = peer(data, config.fire)
        peer_s, peer_cpu = time.perf_counter() - t0, cpu_seconds() - c0
        load["peer_after"] = os.getloadavg()

        from silkfire.quality.fire import validate_fire
        from silkfire.quality.gate import import_gx

        t0 = time.perf_counter()
        import_gx()  # counted apart: a one-off per process
        import_s = time.perf_counter() - t0
        load["gate_before"] = os.getloadavg()
        t0, c0 = time.perf_counter(), cpu_seconds()
        result = validate_fire(data, config, work / "report")
        gate_s, gate_cpu = time.perf_counter() - t0, cpu_seconds() - c0
        load["gate_after"] = os.getloadavg()

        flagged = {line for _, failure in result.failures for line, _ in failure.unexpected_rows}
        missed_gate = sorted(set(planted) - flagged)
        missed_peer = sorted(set(planted) - bad_peer)
        stats = result.stats
        print()
        print(f"{'':28}{'silkfire gate':>16}{'plain-Python peer':>20}")
        print(f"{'generation (shared)':28}{gen_s:>15.1f}s{gen_s:>19.1f}s")
        print(f"{'load + derive':28}{stats['load_s'] + stats['derive_s']:>15.1f}s{'-':>20}")
        print(f"{'GX + reports + Data Docs':28}{stats['gx_s']:>15.1f}s{'-':>20}")
        print(f"{'validation total (wall)':28}{gate_s:>15.1f}s{peer_s:>19.1f}s")
        print(f"{'validation CPU (all procs)':28}{gate_cpu:>15.1f}s{peer_cpu:>19.1f}s")
        print(f"{'(GX import, once)':28}{import_s:>15.1f}s{'':>20}")
        met = gate_s <= 30 and gate_s <= peer_s
        print(f"ratio silkfire / peer: wall {gate_s / peer_s:.2f}x, CPU {gate_cpu / peer_cpu:.2f}x   "
              f"target: <= 30 s and <= the peer (wall)  ->  {'met' if met else 'NOT met'}")
        import resource

        peak_main = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        load["end"] = os.getloadavg()
        print(f"peak RSS main {peak_main:,.0f} MB, largest child {peak_child:,.0f} MB; load average (1, 5, 15 min): "
              + "; ".join(f"{when} {', '.join(f'{x:.1f}' for x in value)}" for when, value in load.items()))
        where = ("load_s", "parse_cpu_s", "schema_cpu_s", "rules_cpu_s", "derive_s", "gx_s", "rows_per_record")
        print("where the time went (validation.json stats): " + ", ".join(
            f"{key} {stats[key]:.1f}" for key in where if key in stats))
        print(f"rows flagged: gate {len(flagged)}, peer {len(bad_peer)}; planted {len(planted)}; "
              f"missed by gate {missed_gate or 'none'}, by peer {missed_peer or 'none'}")
        print(f"gate verdict: {'passed' if result.success else 'failed'} "
              f"({len(result.failures)} failed expectations); reports in {work / 'report'}")
        if not args.no_save:
            raw = {
                "records": args.records, "planted": len(planted), "file_mb": round(size_mb, 1),
                "generation_s": round(gen_s, 2), "reused_file": reuse,
                "gate": {"wall_s": round(gate_s, 3), "cpu_s": round(gate_cpu, 3), "gx_import_s": round(import_s, 3),
                         "stats": {key: stats[key] for key in where if key in stats},
                         "rows_flagged": len(flagged), "missed": missed_gate},
                "peer": {"wall_s": round(peer_s, 3), "cpu_s": round(peer_cpu, 3), "rows_flagged": len(bad_peer),
                         "missed": missed_peer},
                "ratio": {"wall": round(gate_s / peer_s, 3), "cpu": round(gate_cpu / peer_cpu, 3)},
                "target_met": met, "load_average": {when: [round(x, 2) for x in value] for when, value in load.items()},
                "peak_rss_mb": {"main": round(peak_main), "largest_child": round(peak_child)},
            }
            print(f"raw results: {save(raw)}")
        return 0 if not missed_gate else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
