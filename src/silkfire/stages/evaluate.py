"""Stage `evaluate`: batched greedy answers on the held-out MME-style set, scored with MME's official rules.

The untrained base model is scored too (eval.baseline), so every run reports the gain SFT brought; and the SFT
model is scored once more on blank images (eval.blind): what it gets without seeing anything is the floor its
real score must clear to show that it reads the image (metrics `image_gain` = SFT - blind).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

PARAMS = ("eval", "runtime", "paths.world", "paths.base_model", "paths.sft", "paths.reports")


def cap_pairs(records: list[dict[str, Any]], max_items: int | None) -> list[dict[str, Any]]:
    """The first `max_items` questions, never splitting the two questions of an image (acc+ needs both)."""
    if not max_items or len(records) <= max_items:
        return records
    kept: list[dict[str, Any]] = []
    allowed: set[str] = set()
    for record in records:
        qid = record["question_id"]
        if qid not in allowed:
            if len(kept) >= max_items:
                continue
            allowed.add(qid)
        kept.append(record)
    return kept


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    import gc

    import mlflow

    from silkfire.eval.generate import generate_answers
    from silkfire.eval.mme import WORLD_CATEGORY_GROUPS, score_mme
    from silkfire.io import read_records, write_jsonl
    from silkfire.models.loading import load_vlm
    from silkfire.runtime import from_config, oom_hint
    from silkfire.stages.base import resolve_base
    from silkfire.tracking.plots import subtask_bars

    runtime = from_config(cfg)  # a GPU asked for and missing fails here, before any work
    world = root / cfg.paths.world
    out_dir = root / cfg.paths.reports / "evaluate"
    records = cap_pairs(read_records(world / "mme.jsonl"), cfg.eval.max_items)
    # model source -> [(label, blank images?)]: each model is loaded once
    candidates: list[tuple[str | Path, list[tuple[str, bool]]]] = [
        (root / cfg.paths.sft / "model", [("sft", False)] + ([("blind", True)] if cfg.eval.get("blind") else []))
    ]
    if cfg.eval.baseline:
        candidates.append((resolve_base(root / cfg.paths.base_model), [("base", False)]))

    results: dict[str, Any] = {}
    for source, runs in candidates:
        model, processor = load_vlm(source, dtype=runtime.dtype, device=runtime.device)
        for label, blank in runs:
            with oom_hint(f"evaluate ({label})", {"eval.batch_size": cfg.eval.batch_size}, runtime=runtime):
                predictions = generate_answers(
                    model, processor, records, world,
                    batch_size=int(cfg.eval.batch_size), max_new_tokens=int(cfg.eval.max_new_tokens),
                    blank_images=blank,
                )
            scored = [record | {"prediction": prediction} for record, prediction in zip(records, predictions)]
            write_jsonl(out_dir / f"mme_predictions_{label}.jsonl", scored)
            results[label] = score_mme(scored, WORLD_CATEGORY_GROUPS)
        del model, processor
        gc.collect()

    mlflow.log_figure(subtask_bars(results), "plots/mme_subtasks.png")
    mlflow.log_artifacts(str(out_dir), artifact_path="predictions")
    metrics: dict[str, Any] = {"mme": results, "questions": len(records)}
    if "base" in results:
        metrics["gain"] = {group: round(results["sft"][group] - results["base"][group], 3)
                           for group in ("perception", "cognition")}
    if "blind" in results:
        metrics["image_gain"] = {group: round(results["sft"][group] - results["blind"][group], 3)
                                 for group in ("perception", "cognition")}
    return metrics


def summary(metrics: dict[str, Any]) -> str:
    mme = metrics.get("mme", {})
    parts = []
    for group in ("perception", "cognition"):
        if "sft" in mme:
            base = f"{mme['base'][group]:.1f} -> " if "base" in mme else ""
            blind = f" (blind {mme['blind'][group]:.1f})" if "blind" in mme else ""
            parts.append(f"{group} {base}{mme['sft'][group]:.1f}{blind}")
    return "MME-style " + ", ".join(parts)
