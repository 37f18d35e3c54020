"""Stage `evaluate_dpo`: the DPO model beside its start (`silkie.start_model`, reported as `sft`: the SFT model, or an
alignment round's champion) on the held-out world sets.

- MME-style yes/no set (`mme.jsonl`, greedy, official MME parser; eval.answers + eval.mme as `evaluate`);
- MMHal-style set built from the test scenes (eval.mmhal: 8 interleaved types), greedy answers with no
  short-answer suffix, rated 0-6 by the oracle (default) or by an OpenAI-compatible judge
  (`silkie.evaluate.mmhal_rater: api`, client settings from `silkie.judge` of kind api);
  MMHal score, hallucination rate (share of ratings < 3) and per-type scores.
Both sets twice: on the test scenes (the reported figures, top-level metric keys) and on the val scenes (under
`val`: what choices read). Writes predictions and a Markdown comparison table (also an MLflow artefact).
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from silkfire.stages import Dep, Out

PARAMS = ("world.seed", "silkie.evaluate", "silkie.judge", "silkie.start_model", "runtime", "paths.world", "paths.dpo",
          "paths.reports")
DEPS = (
    Dep("${paths.world}"),
    Dep("${silkie.start_model}",
        "measured beside the DPO model as `sft`: its start (the SFT model, or an alignment round's champion)"),
    Dep("${paths.dpo}"),
)
OUTS = (
    Out("${paths.reports}/evaluate_dpo"),
)
MODELS = ("sft", "dpo")
REPORT = "evaluate_dpo"


def _rater(cfg: DictConfig, root: Path) -> Any:
    from silkfire.eval.mmhal import ApiMMHalRater, OracleMMHalRater

    kind = cfg.silkie.evaluate.mmhal_rater
    if kind == "oracle":
        return OracleMMHalRater.from_world(root / cfg.paths.world)
    if kind == "api":
        from silkfire.llm.client import ClientConfig

        judge = OmegaConf.to_container(cfg.silkie.judge, resolve=True)
        if judge.get("kind") != "api":
            raise ValueError("silkie.evaluate.mmhal_rater=api takes its client settings from silkie.judge: "
                             "select silkie/judge=api")
        client = ClientConfig.from_mapping({k: v for k, v in judge.items() if k in ClientConfig.KEYS})
        return ApiMMHalRater(client, root / str(judge["cache_dir"]) / "mmhal")
    raise ValueError(f"silkie.evaluate.mmhal_rater: expected 'oracle' or 'api', got {kind!r}")


def comparison_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per metric, one column per model, and the DPO - SFT difference."""
    rows = [("MMHal score (0-6)", "mmhal", "score"), ("hallucination rate", "mmhal", "hallucination_rate")]
    types = list(next(iter(results.values()))["mmhal"]["per_type"])
    rows += [(f"MMHal {kind}", "mmhal", ("per_type", kind)) for kind in types]
    rows += [("MME perception", "mme", "perception"), ("MME cognition", "mme", "cognition")]

    def value(label: str, section: str, key: Any) -> float:
        block = results[label][section]
        return block[key[0]][key[1]] if isinstance(key, tuple) else block[key]

    lines = ["| metric | " + " | ".join(results) + " | DPO - SFT |", "|---|" + "---:|" * (len(results) + 1)]
    for name, section, key in rows:
        values = [value(label, section, key) for label in results]
        delta = values[-1] - values[0]
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {delta:+.3f} |")
    return "\n".join(lines) + "\n"


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    import mlflow

    from silkfire.eval.mmhal import build_mmhal_world
    from silkfire.io import read_records
    from silkfire.models.loading import load_vlm
    from silkfire.runtime import from_config
    from silkfire.eval.mme import cap_pairs
    from silkfire.tracking.plots import subtask_bars

    import torch

    options = cfg.silkie.evaluate
    runtime = from_config(cfg)  # a GPU asked for and missing fails here, before any work
    torch.set_num_threads(int(options.num_threads))
    world = root / cfg.paths.world
    out_dir = root / cfg.paths.reports / REPORT
    out_dir.mkdir(parents=True, exist_ok=True)
    world_seed = int(cfg.world.seed)  # items depend on the world only: every pipeline seed answers the same ones
    # split -> (MME-style records, MMHal-style items, output folder). Test gives the reported figures (top-level
    # keys); val (the val scenes) is what choices read, under "val".
    splits = {"test": (cap_pairs(read_records(world / "mme.jsonl"), options.mme_max_items),
                       build_mmhal_world(world, out_dir / "mmhal_items.jsonl", seed=world_seed,
                                         max_items=options.mmhal_max_items), out_dir)}
    if options.get("val", True):
        val_dir = out_dir / "val"
        splits["val"] = (cap_pairs(read_records(world / "mme_val.jsonl"), options.mme_max_items),
                         build_mmhal_world(world, val_dir / "mmhal_items.jsonl", seed=world_seed,
                                           max_items=options.get("val_mmhal_max_items"), split="val"), val_dir)
    rater = _rater(cfg, root)
    sources = {"sft": root / cfg.silkie.start_model, "dpo": root / cfg.paths.dpo / "model"}

    results: dict[str, dict[str, dict[str, Any]]] = {split: {} for split in splits}
    try:
        for label, source in sources.items():
            model, processor = load_vlm(source, dtype=runtime.dtype, device=runtime.device)
            for split, (mme_records, items, folder) in splits.items():
                results[split][label] = _evaluate_model(model, processor, label, mme_records, items, rater, world,
                                                        folder, options, runtime)
            del model, processor
            gc.collect()
    finally:
        close = getattr(rater, "close", None)
        if callable(close):
            close()

    table = comparison_table(results["test"])
    (out_dir / "comparison.md").write_text(table, encoding="utf-8")
    mlflow.log_text(table, "comparison.md")
    mlflow.log_figure(subtask_bars({label: r["mme"] for label, r in results["test"].items()}),
                      "plots/mme_subtasks.png")
    mlflow.log_artifacts(str(out_dir), artifact_path="predictions")
    metrics = split_metrics(results["test"], len(splits["test"][0]), len(splits["test"][1]))
    if "val" in results:
        metrics["val"] = split_metrics(results["val"], len(splits["val"][0]), len(splits["val"][1]))
    if hasattr(rater, "metrics"):
        metrics.update(rater.metrics())
    return metrics


def _evaluate_model(model: Any, processor: Any, label: str, mme_records: list[dict[str, Any]],
                    items: list[dict[str, Any]], rater: Any, world: Path, folder: Path, options: Any,
                    runtime: Any) -> dict[str, Any]:
    """One model on one split: MME-style answers scored by MME's rules, MMHal-style answers rated; files written."""
    from silkfire.eval.answers import generate_answers
    from silkfire.eval.mme import WORLD_CATEGORY_GROUPS, score_mme
    from silkfire.eval.mmhal import score_mmhal
    from silkfire.io import write_jsonl
    from silkfire.runtime import oom_hint

    batch = int(options.batch_size)
    oom = {"silkie.evaluate.batch_size": batch}
    with oom_hint(f"evaluate_dpo ({label}, MME)", oom, runtime=runtime):
        mme_answers = generate_answers(model, processor, mme_records, world, batch_size=batch,
                                       max_new_tokens=int(options.mme_max_new_tokens))
    scored = [record | {"prediction": answer} for record, answer in zip(mme_records, mme_answers)]
    write_jsonl(folder / f"mme_predictions_{label}.jsonl", scored)
    questions = [{"question": item["question"], "image": item["image_path"]} for item in items]
    with oom_hint(f"evaluate_dpo ({label}, MMHal)", oom, runtime=runtime):
        mmhal_answers = generate_answers(model, processor, questions, world, batch_size=batch,
                                         max_new_tokens=int(options.mmhal_max_new_tokens))
    rated = rater.rate([item | {"model_answer": answer} for item, answer in zip(items, mmhal_answers)])
    write_jsonl(folder / f"mmhal_rated_{label}.jsonl", rated)
    return {"mme": score_mme(scored, WORLD_CATEGORY_GROUPS), "mmhal": score_mmhal(rated)}


def split_metrics(results: dict[str, dict[str, Any]], mme_questions: int, mmhal_items: int) -> dict[str, Any]:
    """One split's metrics: per model (sft, dpo) the headline figures, and the DPO - SFT gains."""
    sft, dpo = results["sft"], results["dpo"]
    metrics: dict[str, Any] = {
        label: {"mmhal_score": r["mmhal"]["score"], "hallucination_rate": r["mmhal"]["hallucination_rate"],
                "mmhal_per_type": r["mmhal"]["per_type"], "mme_perception": r["mme"]["perception"],
                "mme_cognition": r["mme"]["cognition"],
                "mme_subtasks": {k: v["score"] for k, v in r["mme"]["subtasks"].items()}}
        for label, r in results.items()
    }
    metrics["gain"] = {
        "mmhal_score": round(dpo["mmhal"]["score"] - sft["mmhal"]["score"], 4),
        "hallucination_rate": round(dpo["mmhal"]["hallucination_rate"] - sft["mmhal"]["hallucination_rate"], 4),
        "mme_perception": round(dpo["mme"]["perception"] - sft["mme"]["perception"], 3),
        "mme_cognition": round(dpo["mme"]["cognition"] - sft["mme"]["cognition"], 3),
    }
    metrics["mme_questions"], metrics["mmhal_items"] = mme_questions, mmhal_items
    return metrics


def summary(metrics: dict[str, Any]) -> str:
    if "sft" not in metrics:
        return ""
    sft, dpo = metrics["sft"], metrics["dpo"]
    return (f"MMHal {sft['mmhal_score']:.2f} -> {dpo['mmhal_score']:.2f}, halluc. {sft['hallucination_rate']:.2f} -> "
            f"{dpo['hallucination_rate']:.2f}, MME-P {sft['mme_perception']:.0f} -> {dpo['mme_perception']:.0f}")
