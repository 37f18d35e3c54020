"""Stage `annotate`: the judge from config (oracle by default, or an OpenAI-compatible model) rates every
sampled response on VLFeedback's 3 aspects; token and cost accounting go to MLflow.

Fan-out (`silkie.fanout`, src/silkfire/fanout.py): the records are cut into shards, each annotated by a judge that
`silkfire.vlfeedback.judges.judge_shard` builds from plain config inside its task; the shards' counters are summed
into the same metrics one process reports (the API judge's cost recomputed from the summed tokens, as its client
computes it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from silkfire.artefacts import ANNOTATED
from silkfire.stages import Dep, Out

PARAMS = ("silkie.judge", "silkie.fanout", "quality.max_image_pixels", "silkie.sample.source", "silkie.sample.image_root", "paths.world", "paths.feedback")
DEPS = (
    Dep("${paths.feedback}/samples.jsonl"),
    Dep("${paths.world}"),
    Dep("${silkie.judge.reads}", "what the judge reads: silkie/judge=fire_teacher's model folder (a retrained "
        "teacher re-runs annotate); the samples again for the oracle"),
)
OUTS = (
    Out("${paths.feedback}/annotated.jsonl"),
)
OUTPUT = ANNOTATED


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    import mlflow

    from silkfire.fanout import FanoutConfig, fan_out_shards, fanout_summary
    from silkfire.vlfeedback.judges import judge_shard
    from silkfire.vlfeedback.records import read_feedback, write_feedback
    from silkfire.artefacts import SAMPLES, feedback_image_root
    from silkfire.tracking.runs import safe_params

    feedback = root / cfg.paths.feedback
    records = read_feedback(feedback / SAMPLES)
    judge_cfg = OmegaConf.to_container(cfg.silkie.judge, resolve=True)
    fanout = FanoutConfig.from_mapping(OmegaConf.to_container(cfg.silkie.fanout, resolve=True))
    shards = fan_out_shards(judge_shard, records, fanout, judge=judge_cfg, world_dir=str(root / cfg.paths.world),
                            root=str(root), image_root=str(feedback_image_root(cfg, root)))
    annotated = [record for shard in shards for record in shard.results]
    write_feedback(feedback / OUTPUT, annotated)
    mlflow.log_params(safe_params(shards[0].metrics["params"], prefix="judge."))
    metrics: dict[str, Any] = {"records": len(annotated),
                               **judge_totals(judge_cfg, [shard.metrics["metrics"] for shard in shards])}
    metrics["mean_rating"] = _mean_ratings(annotated)
    metrics["fanout"] = fanout_summary(fanout, shards)
    return metrics


def judge_totals(judge_cfg: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The shards' judge metrics summed; ``judge_cost_usd`` from the summed tokens (a sum of per-shard rounded
    costs could differ from the one-process figure in the last digit)."""
    from silkfire.fanout import sum_metrics

    totals = sum_metrics(parts)
    if "judge_cost_usd" in totals:
        from silkfire.vlfeedback.judges import API_KEYS
        from silkfire.llm.client import ClientConfig, Usage

        client = ClientConfig.from_mapping({key: value for key, value in judge_cfg.items() if key not in API_KEYS})
        usage = Usage(client.prompt_price_per_1m, client.completion_price_per_1m,
                      prompt_tokens=int(totals["judge_prompt_tokens"]),
                      completion_tokens=int(totals["judge_completion_tokens"]))
        totals["judge_cost_usd"] = usage.metrics()["llm_cost_usd"]
    return totals


def _mean_ratings(records: list[dict[str, Any]]) -> dict[str, float]:
    """Mean rating per aspect and per policy (numeric ratings only): what the judge thinks of each policy."""
    from silkfire.vlfeedback.pair_rule import completion_score

    per_model: dict[str, list[float]] = {}
    for record in records:
        for completion in record["completions"]:
            score = completion_score(completion.get("annotations"))
            if score is not None:
                per_model.setdefault(completion["model"], []).append(score)
    return {model: round(sum(values) / len(values), 3) for model, values in sorted(per_model.items())}


def summary(metrics: dict[str, Any]) -> str:
    ranked = sorted(metrics.get("mean_rating", {}).items(), key=lambda item: -item[1])
    best = ", ".join(f"{model} {score:.2f}" for model, score in ranked[:3])
    return f"{metrics.get('records', '?')} records judged; best: {best}"


def check(cfg: DictConfig) -> None:
    """Parse the typed settings this stage reads (silkfire.stages.runner.check_config: before any stage runs)."""
    from silkfire.fanout import FanoutConfig

    FanoutConfig.from_mapping(OmegaConf.to_container(cfg.silkie.fanout, resolve=True))
