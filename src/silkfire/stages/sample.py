"""Stage `sample`: K responses per instruction from K policies drawn from the pool (VLFeedback's sampling).

World mode (default): open, probe and MME-style questions of the world's (gated) train split; the pool mixes the
project's own checkpoints (untrained base, SFT at each saved step, final SFT; sampled with temperature) with
scripted policies of known failure profiles. Real mode (`silkie.sample.source: vlfeedback`): the prompts of a
VLFeedback file and a pool of local HF folders / OpenAI-compatible endpoints. Output: VLFeedback-format records
without annotations (`<paths.feedback>/samples.jsonl`).

Fan-out (`silkie.fanout`, src/silkfire/fanout.py): the work is cut into one item per policy batch (a policy's
instructions in `batch_size` pieces, the batches it generates anyway), so a sharded run gives the same records as
one process, whatever the runner; `sample_shard` builds the pool from plain config inside each task.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from silkfire.artefacts import SAMPLES
from silkfire.artefacts import feedback_image_root as image_root
from silkfire.stages import Dep, Out

PARAMS = ("silkie.seed", "world", "runtime", "silkie.sample", "quality.max_image_pixels", "silkie.fanout", "paths.world", "paths.reports", "paths.base_model",
          "paths.sft", "paths.feedback", "silkie.start_model")
DEPS = (
    Dep("${paths.world}"),
    Dep("${paths.reports}/validate/verdict.json",
        "only gated world questions are sampled"),
    Dep("${paths.base_model}"),
    Dep("${paths.sft}",
        "the final SFT model and its step checkpoints are pool members"),
    Dep("${silkie.start_model}",
        "an alignment round's champion is a pool member (silkie.sample.pool.champion)"),
)
OUTS = (
    Out("${paths.feedback}/samples.jsonl"),
)
OUTPUT = SAMPLES


def instructions_of(cfg: DictConfig, root: Path) -> list[Any]:
    from silkfire.policies.instructions import MMHAL_FAMILY, feedback_instructions, world_instructions
    from silkfire.artefacts import gated_file

    sample = cfg.silkie.sample
    limit = None if sample.max_instructions is None else int(sample.max_instructions)
    if sample.source == "world":
        train = gated_file(cfg, root, "train.jsonl")
        weights = OmegaConf.to_container(sample.family_weights) if sample.family_weights else None
        families = list(sample.families) if sample.families else None
        kinds = sample.get("mmhal_kinds")
        instructions = world_instructions(root / cfg.paths.world, families=families, max_instructions=limit,
                                          family_weights=weights, seed=int(cfg.silkie.seed),
                                          mmhal_kinds=list(kinds) if kinds is not None else None)
        if train != root / cfg.paths.world / "train.jsonl":  # the gate filtered rows: keep only what passed
            from silkfire.io import read_records

            # mmhal questions are built from scenes, not read from train.jsonl: keep those whose scene passed
            kept = read_records(train)
            passed = {record["id"] for record in kept}
            scenes = {record["scene_id"] for record in kept}
            instructions = [instruction for instruction in instructions if instruction.id in passed
                            or (instruction.family == MMHAL_FAMILY and instruction.scene is not None
                                and instruction.scene.scene_id in scenes)]
        return instructions
    if sample.source == "vlfeedback":
        if not sample.prompts:
            raise ValueError("silkie.sample.prompts: the VLFeedback file whose prompts are sampled is not set")
        prompts = root / str(sample.prompts)  # as published: parquet (images embedded or not), JSONL, JSON list
        images = image_root(cfg, root)  # parquet image bytes are extracted under it (silkfire.data.published)
        instructions = feedback_instructions(prompts, max_instructions=limit, seed=int(cfg.silkie.seed),
                                             image_root=images)
        refuse_unsafe_images(prompts, instructions, images)
        return instructions
    raise ValueError(f"silkie.sample.source: expected 'world' or 'vlfeedback', got {sample.source!r}")


def refuse_unsafe_images(prompts: Path, instructions: list[Any], images: Path) -> None:
    """External prompts are data from elsewhere: every image they name passes the path policy (inside the image
    root, a real image under the pixel limit) before any policy sees one, or the stage stops naming them all."""
    from silkfire.images import refusals

    refused = refusals(images, [instruction.image for instruction in instructions])
    if refused:
        bad = [f"{prompts}: id {instruction.id!r}, field img_path {instruction.image!r}: {refused[instruction.image]}"
               for instruction in instructions if instruction.image in refused]
        raise ValueError(f"sample: {len(bad)} prompt(s) name images the image policy refuses (image root {images}); "
                         "nothing was sent. Fix or remove them:\n  " + "\n  ".join(bad[:20])
                         + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""))


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    import mlflow

    from silkfire.fanout import FanoutConfig, fan_out_shards, fanout_summary, sum_metrics
    from silkfire.vlfeedback.records import write_feedback
    from silkfire.policies.pool import SamplingDefaults, assemble_records, build_pool, draw_all, pool_stats
    from silkfire.world.config import WorldConfig

    import torch

    from silkfire.runtime import from_config

    runtime = from_config(cfg)  # the HF policies' device and dtype; a GPU asked for and missing fails here
    sample = cfg.silkie.sample
    torch.set_num_threads(int(sample.num_threads))
    fanout = FanoutConfig.from_mapping(OmegaConf.to_container(cfg.silkie.fanout, resolve=True))
    instructions = instructions_of(cfg, root)
    if not instructions:
        raise ValueError("sample: no instructions to sample (check silkie.sample.families / max_instructions)")
    defaults = SamplingDefaults(temperature=float(sample.temperature), top_p=float(sample.top_p),
                                max_new_tokens=int(sample.max_new_tokens), batch_size=int(sample.batch_size),
                                dtype=runtime.dtype, device=runtime.device, progress=bool(sample.progress))
    world = OmegaConf.to_container(cfg.world, resolve=True) if sample.source == "world" else None
    pool_cfg = OmegaConf.to_container(sample.pool, resolve=True)
    pool = build_pool(pool_cfg, root, defaults, WorldConfig.from_mapping(world) if world else None)
    draws, assigned = draw_all(instructions, pool, int(sample.responses), int(cfg.silkie.seed))
    items = work_items(assigned, pool, defaults.batch_size)
    shards = fan_out_shards(sample_shard, items, fanout, describe=describe_work, pool=pool_cfg,
                            defaults=asdict(defaults), world=world, root=str(root),
                            image_root=str(image_root(cfg, root)), seed=int(cfg.silkie.seed),
                            num_threads=int(sample.num_threads))
    responses: dict[tuple[str, str], str] = {}
    for item, answers in zip(items, (answers for shard in shards for answers in shard.results)):
        if len(answers) != len(item["instructions"]):
            raise RuntimeError(f"policy {item['policy']!r} returned {len(answers)} answers for "
                               f"{len(item['instructions'])} instructions")
        for instruction, answer in zip(item["instructions"], answers):
            responses[(instruction.id, item["policy"])] = answer
    records, blank = assemble_records(instructions, draws, responses)
    per_policy = sum_metrics([shard.metrics.get("usage", {}) for shard in shards])
    usage = {key: value for name in pool for key, value in per_policy.get(name, {}).items()}  # pool order
    stats = pool_stats(pool, assigned, blank, usage)
    out = root / cfg.paths.feedback / OUTPUT
    write_feedback(out, records)
    mlflow.log_dict(stats["policies"], "sample/pool.json")
    families: dict[str, int] = {}
    for instruction in instructions:
        families[str(instruction.family)] = families.get(str(instruction.family), 0) + 1
    return {"instructions": len(records), "responses": sum(stats["responses"].values()), "pool_size": len(pool),
            "per_policy": stats["responses"], "blank": stats["blank"], "families": families, **stats["usage"],
            "fanout": fanout_summary(fanout, shards)}


def work_items(assigned: dict[str, list[Any]], pool: dict[str, Any], batch_size: int) -> list[dict[str, Any]]:
    """One item per policy batch, policies in name order: ``{"policy": name, "instructions": [...]}``. Cut at the
    policy's own generation batch size, so a shard's batches are the batches one process would generate (a model
    policy seeds each batch from its first instruction)."""
    items = []
    for name in sorted(assigned):
        todo = assigned[name]
        size = max(1, int(getattr(pool[name].policy, "batch_size", None) or batch_size))
        items.extend({"policy": name, "instructions": todo[start:start + size]}
                     for start in range(0, len(todo), size))
    return items


def describe_work(piece: list[dict[str, Any]], start: int) -> str:
    """A shard's work for error messages: per policy, its instruction id range (``sft 'a' .. 'k' (64)``)."""
    spans: list[list[Any]] = []  # [policy, first id, last id, count]
    for item in piece:
        todo = item["instructions"]
        if spans and spans[-1][0] == item["policy"]:
            spans[-1][2:] = [todo[-1].id, spans[-1][3] + len(todo)]
        else:
            spans.append([item["policy"], todo[0].id, todo[-1].id, len(todo)])
    return (f"policy batches {start} .. {start + len(piece) - 1}: instructions "
            + "; ".join(f"{name} {first!r} .. {last!r} ({count})" for name, first, last, count in spans))


def sample_shard(items: list[dict[str, Any]], *, pool: dict[str, Any], defaults: dict[str, Any],
                 world: dict[str, Any] | None, root: str, image_root: str, seed: int,
                 num_threads: int) -> tuple[list[list[str]], dict[str, Any]]:
    """Answers for one shard of work items (one list per item) and each policy's API usage, with the pool built
    from its plain config here (inside the task: models load where the shard runs)."""
    from tqdm.auto import tqdm

    from silkfire.fanout import sum_metrics
    from silkfire.policies.hf import HFPolicy
    from silkfire.policies.pool import SamplingDefaults, build_pool
    from silkfire.world.config import WorldConfig

    settings = SamplingDefaults(**defaults)
    built = build_pool(pool, Path(root), settings, WorldConfig.from_mapping(world) if world else None)
    groups: list[tuple[str, list[int]]] = []  # runs of consecutive items of one policy: one respond call each
    for position, item in enumerate(items):
        if groups and groups[-1][0] == item["policy"]:
            groups[-1][1].append(position)
        else:
            groups.append((item["policy"], [position]))
    if any(isinstance(built[name].policy, HFPolicy) for name, _ in groups):
        import torch

        torch.set_num_threads(num_threads)  # a worker process starts with torch's default
    results: list[list[str]] = [[] for _ in items]
    usage: dict[str, dict[str, Any]] = {}
    for name, positions in tqdm(groups, desc="policies", unit="policy", disable=not settings.progress):
        if name not in built:
            raise ValueError(f"sample shard: policy {name!r} is not in the pool built from silkie.sample.pool "
                             f"here ({sorted(built)}): do the workers see the same model folders?")
        policy = built[name].policy
        todo = [instruction for position in positions for instruction in items[position]["instructions"]]
        answers = policy.respond(todo, Path(image_root), seed)
        if len(answers) != len(todo):
            raise RuntimeError(f"policy {name!r} returned {len(answers)} answers for {len(todo)} instructions")
        offset = 0
        for position in positions:
            count = len(items[position]["instructions"])
            results[position] = list(answers[offset:offset + count])
            offset += count
        if hasattr(policy, "metrics"):
            usage[name] = sum_metrics([usage.get(name, {}), policy.metrics()])
    return results, {"usage": usage}


def summary(metrics: dict[str, Any]) -> str:
    return (f"{metrics.get('instructions', '?')} instructions x {metrics.get('responses', 0) // max(1, metrics.get('instructions', 1))}"
            f" responses from a pool of {metrics.get('pool_size', '?')}")


def check(cfg: DictConfig) -> None:
    """Parse the typed settings this stage reads (silkfire.stages.runner.check_config: before any stage runs)."""
    from silkfire.fanout import FanoutConfig

    FanoutConfig.from_mapping(OmegaConf.to_container(cfg.silkie.fanout, resolve=True))
