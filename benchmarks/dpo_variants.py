"""Two DPO variants compared over seeds, with paired-bootstrap intervals: mDPO against sigmoid DPO (issue 18 item 3),
or any other `silkie.*` choice swept the same way.

    silkfire sweep silkie.seed=0,1,2 silkie.dpo.loss=sigmoid,mdpo 'pipeline.branches=[silkie]' --mode flow \\
        --metric evaluate_dpo.val.dpo.hallucination_rate --name mdpo-vs-dpo
    .venv/bin/python benchmarks/dpo_variants.py --sweep mdpo-vs-dpo --param silkie.dpo.loss --baseline sigmoid

Variants from separate sweeps (the judge is a config group, not a value to sweep beside the seed):

    .venv/bin/python benchmarks/dpo_variants.py --sweep mdpo-vs-dpo --sweep teacher-judge \
        --param silkie.judge.kind --baseline oracle --where silkie.dpo.loss=sigmoid

The sweep's points are matched by ``--pair-by`` (default ``silkie.seed``: the branch seed on one foundation, so the
interval covers pair sampling and DPO training, not the foundation). For every pair-by value both variants' DPO
models answered the same MMHal-style items (val and test); the difference variant - baseline of the MMHal-style
score and hallucination rate gets the report's two-level paired bootstrap (seeds, then items; silkfire.results).
Each variant's own DPO - start difference is printed too. Writes ``<out>/dpo_variants.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPLITS = {"val": "predictions/val/mmhal_rated_{model}.jsonl", "test": "predictions/mmhal_rated_{model}.jsonl"}


def point_runs(client: Any, sweeps: list[str], param: str, pair_by: str,
               where: dict[str, str]) -> dict[tuple[str, str], Any]:
    """(pair-by value, variant) -> the point's pipeline run (the newest finished one of each), over the points of
    ``sweeps`` whose params match ``where``."""
    from silkfire import results

    experiments = results.all_experiments(client)
    points: dict[tuple[str, str], Any] = {}
    for sweep in sweeps:
        for run in results.search_runs(client, f"tags.`{results.SWEEP_TAG}` = '{sweep}'", experiments):  # newest first
            if run.data.tags.get(results.KIND_TAG) != "pipeline" or run.info.status != "FINISHED":
                continue
            params = run.data.params
            if any(params.get(key) != value for key, value in where.items()):
                continue
            variant = params.get(f"sweep.{param}", params.get(param))
            by = params.get(f"sweep.{pair_by}", params.get(pair_by))
            if variant is None or by is None:
                raise SystemExit(f"run {run.info.run_id} of sweep {sweep!r} has no param {param!r} / {pair_by!r}")
            points.setdefault((by, variant), run)
    return points


def rated_items(client: Any, run: Any, folder: Path) -> dict[str, dict[str, tuple[dict, dict]]]:
    """split -> model (sft = the start, dpo) -> (library scores, item key -> [rating]) of one pipeline run."""
    from silkfire import results

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file otherwise
    stage = results.stage_runs(client, run, results.all_experiments(client))["evaluate_dpo"]
    out: dict[str, dict[str, tuple[dict, dict]]] = {}
    for split, pattern in SPLITS.items():
        out[split] = {}
        for model in ("sft", "dpo"):
            target = folder / run.info.run_id / split / model
            target.mkdir(parents=True, exist_ok=True)
            out[split][model] = results.read_mmhal(results.download(client, stage, pattern.format(model=model),
                                                                    target))
    return out


def compare(client: Any, sweeps: list[str], param: str, baseline: str, pair_by: str, bootstrap: int,
            where: dict[str, str] | None = None) -> dict[str, Any]:
    from silkfire import results

    sweep = "+".join(sweeps)
    points = point_runs(client, sweeps, param, pair_by, where or {})
    variants = sorted({variant for _, variant in points})
    if baseline not in variants or len(variants) != 2:
        raise SystemExit(f"sweep {sweep!r}: {param} takes {variants}; expected two values, one of them {baseline!r}")
    other = next(v for v in variants if v != baseline)
    keys = sorted({by for by, _ in points if (by, baseline) in points and (by, other) in points})
    if not keys:
        raise SystemExit(f"sweep {sweep!r}: no {pair_by} value has a finished run of both variants")
    statistics = {"mmhal_score": results.mean_of(0), "hallucination_rate": results.share_below(0, 3.0)}
    report: dict[str, Any] = {"sweep": sweep, "param": param, "baseline": baseline, "variant": other,
                              "pair_by": pair_by, "where": where or {}, "values": keys, "runs": {}, "splits": {}}
    with tempfile.TemporaryDirectory() as folder:
        items = {}
        for by in keys:
            for variant in (baseline, other):
                run = points[(by, variant)]
                report["runs"][f"{by}/{variant}"] = run.info.run_id
                report.setdefault("commits", set()).add(run.data.tags.get("silkfire.git_commit", "?"))
                report.setdefault("machines", set()).add(run.data.tags.get("silkfire.cpu", "?"))
                items[(by, variant)] = rated_items(client, run, Path(folder))
    report["commits"], report["machines"] = sorted(report["commits"]), sorted(report["machines"])
    for split in SPLITS:
        block: dict[str, Any] = {}
        for name, statistic in statistics.items():
            column = "score" if name == "mmhal_score" else name
            per_variant = {variant: results.t_interval([items[(by, variant)][split]["dpo"][0][column] for by in keys])
                           for variant in (baseline, other)}
            versus = [results.paired_items(items[(by, baseline)][split]["dpo"][1], items[(by, other)][split]["dpo"][1],
                                    f"{split} {by}")[0] for by in keys]
            against_start = {variant: results.paired_bootstrap(
                [results.paired_items(items[(by, variant)][split]["sft"][1], items[(by, variant)][split]["dpo"][1],
                               f"{split} {by}")[0] for by in keys], statistic, B=bootstrap)
                for variant in (baseline, other)}
            block[name] = {"per_variant": per_variant,
                           "difference": results.paired_bootstrap(versus, statistic, B=bootstrap),
                           "dpo_minus_start": against_start}
        report["splits"][split] = block
    return report


def markdown(report: dict[str, Any]) -> str:
    base, other = report["baseline"], report["variant"]
    lines = [f"{report['param']}: {other} vs {base}, sweep `{report['sweep']}`, paired by {report['pair_by']} "
             f"({', '.join(report['values'])}); mean [95% interval], two-level paired bootstrap. Code "
             f"{', '.join(c[:12] for c in report['commits'])}; `benchmarks/dpo_variants.py --sweep {report['sweep']}`",
             ""]
    lines += [f"| split | metric | {base} | {other} | {other} - {base} | {base} - start | {other} - start |",
              "|---|---|---:|---:|---:|---:|---:|"]

    def interval(block: dict[str, Any]) -> str:
        ci = block.get("ci")
        return f"{block['mean']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")

    for split, metrics in report["splits"].items():
        for name, block in metrics.items():
            means = [f"{block['per_variant'][v]['mean']:.3f}" for v in (base, other)]
            lines.append(f"| {split} | {name} | {means[0]} | {means[1]} | {interval(block['difference'])} | "
                         f"{interval(block['dpo_minus_start'][base])} | {interval(block['dpo_minus_start'][other])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", required=True, action="append",
                        help="a sweep's --name; repeat to compare variants run in separate sweeps")
    parser.add_argument("--where", action="append", default=[],
                        help="KEY=VALUE: only points whose run param KEY is VALUE (e.g. silkie.dpo.loss=sigmoid)")
    parser.add_argument("--param", default="silkie.dpo.loss")
    parser.add_argument("--baseline", default="sigmoid")
    parser.add_argument("--pair-by", default="silkie.seed")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None, help="default: results/<sweep>[+<sweep>]")
    args = parser.parse_args(argv)

    import mlflow
    from mlflow import MlflowClient

    from silkfire.config import project_root
    from silkfire.io import write_json
    from silkfire.tracking.store import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(project_root()))
    where = dict(item.split("=", 1) for item in args.where)
    report = compare(MlflowClient(), args.sweep, args.param, args.baseline, args.pair_by, args.bootstrap, where)
    out = args.out or ROOT / "results" / report["sweep"]
    write_json(out / "dpo_variants.json", report)
    text = markdown(report)
    (out / "dpo_variants.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
