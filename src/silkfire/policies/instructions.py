"""Where instructions come from: the world's training split (default) or VLFeedback prompts (real mode)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from silkfire.io import read_records
from silkfire.policies.base import Instruction
from silkfire.world.config import WorldConfig
from silkfire.world.scene import Scene, scene_from_record

# Built on the fly (not a family of train.jsonl): MMHal-Bench's eight question kinds asked about training scenes.
MMHAL_FAMILY = "mmhal"


def mmhal_records(config: WorldConfig, scenes: Mapping[str, Scene], seed: int = 0,
                  kinds: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One MMHal-style question per *training* scene, as world records of family ``mmhal``.

    VLFeedback's instructions cover the kinds of questions MMHal-Bench asks (relations, background, holistic
    descriptions, comparisons, ...); the world's train split asks only some of them, so these fill the gap.
    Same builder as the benchmark set (eval/mmhal.py), but on training scenes: no evaluated image is seen.
    ``kinds``: the question types kept (None = all eight); a question asked in another form (the builder's
    fallback "What is in the <cell>?") keeps its type's label."""
    from silkfire.eval.mmhal import build_mmhal_items

    train = sorted((scene for scene in scenes.values() if scene.split == "train"), key=lambda s: s.scene_id)
    return [{"id": f"{item['image_id']}/{MMHAL_FAMILY}/{item['question_type']}", "scene_id": item["image_id"],
             "image": item["image_path"], "family": MMHAL_FAMILY, "category": item["question_type"],
             "question": item["question"], "answer": item["gt_answer"]}
            for item in build_mmhal_items(train, config, seed)
            if kinds is None or item["question_type"] in kinds]


def world_instructions(world_dir: Path, *, split_file: str = "train.jsonl", families: Sequence[str] | None = None,
                       max_instructions: int | None = None, family_weights: Mapping[str, float] | None = None,
                       seed: int = 0, mmhal_kinds: Sequence[str] | None = None) -> list[Instruction]:
    """World questions (open, probe and MME-style by default; ``mmhal``: :func:`mmhal_records`) with their
    scene graphs, capped with a seeded draw (``family_weights`` sets each family's share of the cap), in a
    fixed order."""
    from silkfire.train.data import select_records

    world_dir = Path(world_dir)
    pool: list[dict[str, Any]] = read_records(world_dir / split_file)
    if families and MMHAL_FAMILY in families:  # needs the world's vocabulary (manifest) besides its scenes
        from silkfire.feedback.oracle import load_world

        config, scenes = load_world(world_dir)
        asked = {(record.get("scene_id"), record.get("question")) for record in pool}
        # a question the split already asks of that scene is not repeated
        pool += [record for record in mmhal_records(config, scenes, seed, mmhal_kinds)
                 if (record["scene_id"], record["question"]) not in asked]
    else:
        scenes = {record["scene_id"]: scene_from_record(record)
                  for record in read_records(world_dir / "scenes.jsonl")}
    records = select_records(pool, list(families) if families else None, max_instructions, seed, family_weights)
    instructions = []
    for index, record in enumerate(records):
        scene_id = record.get("scene_id")
        if scene_id not in scenes:
            raise ValueError(f"{world_dir / split_file}: record {index} (id {record.get('id')!r}): scene_id "
                             f"{scene_id!r} is not in {world_dir / 'scenes.jsonl'}")
        instructions.append(Instruction(
            id=str(record["id"]), prompt=str(record["question"]), image=str(record["image"]),
            scene=scenes[scene_id], family=record.get("family"), category=record.get("category"),
            answer=str(record["answer"]),
        ))
    return sorted(instructions, key=lambda instruction: instruction.id)


def feedback_instructions(path: Path, *, max_instructions: int | None = None, seed: int = 0) -> list[Instruction]:
    """Prompts of a VLFeedback file (``id``, ``prompt``, ``img_path``; completions, if any, are ignored)."""
    import random

    records: list[dict[str, Any]] = read_records(path)
    instructions = []
    for index, record in enumerate(records):
        for key in ("id", "prompt", "img_path"):
            if not isinstance(record.get(key), str) or not record[key].strip():
                raise ValueError(f"{path}: record {index}: field {key!r} must be a non-empty string, "
                                 f"got {record.get(key)!r}"[:300])
        instructions.append(Instruction(id=record["id"], prompt=record["prompt"], image=record["img_path"]))
    if max_instructions is not None and len(instructions) > max_instructions:
        instructions = random.Random(seed).sample(instructions, max_instructions)
    return sorted(instructions, key=lambda instruction: instruction.id)
