"""Stage `evaluate`: batched greedy answers on the held-out MME-style sets, scored with MME's official rules.

Two sets: `mme.jsonl` (test scenes) gives the reported figures at the top level of the metrics; `mme_val.jsonl`
(val scenes) gives the SFT model's figures under `val`, the only ones a choice may read (the champion gate, sweeps).

The untrained base model is scored too (eval.baseline), so every run reports the gain SFT brought; and the SFT
model is scored once more on blank images (eval.blind): what it gets without seeing anything is the floor its
real score must clear to show that it reads the image (metrics `image_gain` = SFT - blind).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from silkfire.stages import Dep, Out

PARAMS = ("eval", "runtime", "paths.world", "paths.base_model", "paths.sft", "paths.reports")
DEPS = (
    Dep("${paths.world}"),
    Dep("${paths.base_model}"),
    Dep("${paths.sft}"),
)
OUTS = (
    Out("${paths.reports}/evaluate"),
)


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    import gc

    import mlflow

    from silkfire.eval.answers import generate_answers
    from silkfire.eval.mme import WORLD_CATEGORY_GROUPS, cap_pairs, score_mme
    from silkfire.io import read_records, write_jsonl
    from silkfire.models.loading import load_vlm
    from silkfire.runtime import from_config, oom_hint
    from silkfire.artefacts import resolve_base
    from silkfire.tracking.plots import subtask_bars

    runtime = from_config(cfg)  # a GPU asked for and missing fails here, before any work
    world = root / cfg.paths.world
    out_dir = root / cfg.paths.reports / "evaluate"
    # split -> (questions, output folder): the test set gives the reported figures; the val set (val scenes) is what
    # every choice reads (the champion gate, sweeps), so that test figures never steer a decision
    splits = {"test": (cap_pairs(read_records(world / "mme.jsonl"), cfg.eval.max_items), out_dir)}
    if cfg.eval.get("val", True):
        splits["val"] = (cap_pairs(read_records(world / "mme_val.jsonl"), cfg.eval.max_items), out_dir / "val")
    # model source -> [(label, blank images?, splits)]: each model is loaded once; base and blind are test-only
    # baselines (nothing is chosen on them)
    candidates: list[tuple[str | Path, list[tuple[str, bool, tuple[str, ...]]]]] = [
        (root / cfg.paths.sft / "model",
         [("sft", False, tuple(splits))] + ([("blind", True, ("test",))] if cfg.eval.get("blind") else []))
    ]
    if cfg.eval.baseline:
        candidates.append((resolve_base(root / cfg.paths.base_model), [("base", False, ("test",))]))

    results: dict[str, dict[str, Any]] = {split: {} for split in splits}
    for source, runs in candidates:
        model, processor = load_vlm(source, dtype=runtime.dtype, device=runtime.device)
        for label, blank, label_splits in runs:
            for split in label_splits:
                records, folder = splits[split]
                with oom_hint(f"evaluate ({label}, {split})", {"eval.batch_size": cfg.eval.batch_size},
                              runtime=runtime):
                    predictions = generate_answers(
                        model, processor, records, world,
                        batch_size=int(cfg.eval.batch_size), max_new_tokens=int(cfg.eval.max_new_tokens),
                        blank_images=blank,
                    )
                scored = [record | {"prediction": prediction} for record, prediction in zip(records, predictions)]
                write_jsonl(folder / f"mme_predictions_{label}.jsonl", scored)
                results[split][label] = score_mme(scored, WORLD_CATEGORY_GROUPS)
        del model, processor
        gc.collect()

    mlflow.log_figure(subtask_bars(results["test"]), "plots/mme_subtasks.png")
    mlflow.log_artifacts(str(out_dir), artifact_path="predictions")
    # the test figures keep the top-level keys (README, headline metrics); val's sit under "val"
    metrics = split_metrics(results["test"], len(splits["test"][0]))
    if "val" in results:
        metrics["val"] = split_metrics(results["val"], len(splits["val"][0]))
    return metrics


def split_metrics(results: dict[str, Any], questions: int) -> dict[str, Any]:
    """One split's metrics: the MME scores per model, and the SFT gains over the base and blind runs present."""
    metrics: dict[str, Any] = {"mme": results, "questions": questions}
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
