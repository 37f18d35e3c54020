"""Stage `annotate`: the judge from config (oracle by default, or an OpenAI-compatible model) rates every
sampled response on VLFeedback's 3 aspects; token and cost accounting go to MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

PARAMS = ("silkie.judge", "silkie.sample.source", "silkie.sample.image_root", "paths.world", "paths.feedback")
OUTPUT = "annotated.jsonl"


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    import mlflow

    from silkfire.feedback.judges import make_judge
    from silkfire.feedback.records import read_feedback, write_feedback
    from silkfire.stages.sample import OUTPUT as SAMPLES
    from silkfire.stages.sample import image_root
    from silkfire.tracking.runs import safe_params

    feedback = root / cfg.paths.feedback
    records = read_feedback(feedback / SAMPLES)
    judge_cfg = OmegaConf.to_container(cfg.silkie.judge, resolve=True)
    judge = make_judge(judge_cfg, world_dir=root / cfg.paths.world, root=root)
    try:
        annotated = judge.annotate(records, image_root=image_root(cfg, root))
    finally:
        close = getattr(judge, "close", None)
        if callable(close):
            close()
    write_feedback(feedback / OUTPUT, annotated)
    mlflow.log_params(safe_params(judge.params(), prefix="judge."))
    metrics: dict[str, Any] = {"records": len(annotated), **judge.metrics()}
    metrics["mean_rating"] = _mean_ratings(annotated)
    return metrics


def _mean_ratings(records: list[dict[str, Any]]) -> dict[str, float]:
    """Mean rating per aspect and per policy (numeric ratings only): what the judge thinks of each policy."""
    from silkfire.feedback.pairs import completion_score

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
