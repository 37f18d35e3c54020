"""Stage `sample`: K responses per instruction from K policies drawn from the pool (VLFeedback's sampling).

World mode (default): open, probe and MME-style questions of the world's (gated) train split; the pool mixes the
project's own checkpoints (untrained base, SFT at each saved step, final SFT; sampled with temperature) with
scripted policies of known failure profiles. Real mode (`silkie.sample.source: vlfeedback`): the prompts of a
VLFeedback file and a pool of local HF folders / OpenAI-compatible endpoints. Output: VLFeedback-format records
without annotations (`<paths.feedback>/samples.jsonl`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

PARAMS = ("seed", "world", "model.dtype", "silkie.sample", "paths.world", "paths.reports", "paths.base_model",
          "paths.sft", "paths.feedback")
OUTPUT = "samples.jsonl"


def image_root(cfg: DictConfig, root: Path) -> Path:
    """Folder the records' img_path values are relative to: the world, or silkie.sample.image_root."""
    sample = cfg.silkie.sample
    if sample.source == "world":
        return root / cfg.paths.world
    if not sample.image_root:
        raise ValueError("silkie.sample.image_root: set it to the folder the prompts' img_path values are "
                         "relative to (needed when silkie.sample.source is vlfeedback)")
    return root / str(sample.image_root)


def instructions_of(cfg: DictConfig, root: Path) -> list[Any]:
    from silkfire.policies.instructions import feedback_instructions, world_instructions
    from silkfire.stages.validate import gated_file

    sample = cfg.silkie.sample
    limit = None if sample.max_instructions is None else int(sample.max_instructions)
    if sample.source == "world":
        train = gated_file(cfg, root, "train.jsonl")
        weights = OmegaConf.to_container(sample.family_weights) if sample.family_weights else None
        families = list(sample.families) if sample.families else None
        instructions = world_instructions(root / cfg.paths.world, families=families, max_instructions=limit,
                                          family_weights=weights, seed=int(cfg.seed))
        if train != root / cfg.paths.world / "train.jsonl":  # the gate filtered rows: keep only what passed
            from silkfire.io import read_records

            passed = {record["id"] for record in read_records(train)}
            instructions = [instruction for instruction in instructions if instruction.id in passed]
        return instructions
    if sample.source == "vlfeedback":
        if not sample.prompts:
            raise ValueError("silkie.sample.prompts: the VLFeedback file whose prompts are sampled is not set")
        return feedback_instructions(root / str(sample.prompts), max_instructions=limit, seed=int(cfg.seed))
    raise ValueError(f"silkie.sample.source: expected 'world' or 'vlfeedback', got {sample.source!r}")


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    import mlflow

    from silkfire.feedback.records import write_feedback
    from silkfire.policies.pool import SamplingDefaults, build_pool, sample_responses
    from silkfire.world.config import WorldConfig

    import torch

    sample = cfg.silkie.sample
    torch.set_num_threads(int(sample.num_threads))
    instructions = instructions_of(cfg, root)
    if not instructions:
        raise ValueError("sample: no instructions to sample (check silkie.sample.families / max_instructions)")
    defaults = SamplingDefaults(temperature=float(sample.temperature), top_p=float(sample.top_p),
                                max_new_tokens=int(sample.max_new_tokens), batch_size=int(sample.batch_size),
                                dtype=str(cfg.model.dtype), progress=bool(sample.progress))
    world = WorldConfig.from_mapping(cfg.world) if sample.source == "world" else None
    pool = build_pool(OmegaConf.to_container(sample.pool, resolve=True), root, defaults, world)
    records, stats = sample_responses(instructions, pool, image_root(cfg, root), k=int(sample.responses),
                                      seed=int(cfg.seed), progress=bool(sample.progress))
    out = root / cfg.paths.feedback / OUTPUT
    write_feedback(out, records)
    mlflow.log_dict(stats["policies"], "sample/pool.json")
    families: dict[str, int] = {}
    for instruction in instructions:
        families[str(instruction.family)] = families.get(str(instruction.family), 0) + 1
    return {"instructions": len(records), "responses": sum(stats["responses"].values()), "pool_size": len(pool),
            "per_policy": stats["responses"], "blank": stats["blank"], "families": families, **stats["usage"]}


def summary(metrics: dict[str, Any]) -> str:
    return (f"{metrics.get('instructions', '?')} instructions x {metrics.get('responses', 0) // max(1, metrics.get('instructions', 1))}"
            f" responses from a pool of {metrics.get('pool_size', '?')}")
