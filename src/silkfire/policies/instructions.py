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
        from silkfire.vlfeedback.oracle_judge import load_world

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


def feedback_instructions(path: Path, *, max_instructions: int | None = None, seed: int = 0,
                          image_root: Path | None = None) -> list[Instruction]:
    """Prompts of a VLFeedback file as published (``id``, ``prompt``, ``img_path``; completions, if any, are
    ignored): the JSONL export, a JSON list, or parquet (a file or a folder of shards, read with pyarrow).

    A seeded sample of ``max_instructions`` (the same draw whatever the layout). Parquet that embeds the images
    as bytes: the sampled rows' images are extracted under ``image_root`` by content hash
    (:mod:`silkfire.data.published`) and ``img_path`` names the extracted file; either way every image is then
    read through the image path policy. A bad record is named with its file and line/row and field."""
    import random

    from silkfire.data.published import extract_row_images, has_embedded_images, vlfeedback_prompts

    rows = vlfeedback_prompts(path)
    instructions, numbers = [], []
    for number, where, record in rows:
        for key in ("id", "prompt", "img_path"):
            if not isinstance(record.get(key), str) or not record[key].strip():
                raise ValueError(f"{where}: field {key!r} must be a non-empty string, got {record.get(key)!r}"[:300])
        instructions.append(Instruction(id=record["id"], prompt=record["prompt"], image=record["img_path"]))
        numbers.append(number)
    if max_instructions is not None and len(instructions) > max_instructions:
        chosen = random.Random(seed).sample(range(len(instructions)), max_instructions)
        instructions, numbers = [instructions[i] for i in chosen], [numbers[i] for i in chosen]
    if has_embedded_images(path, "vlfeedback"):
        if image_root is None:
            raise ValueError(f"{path}: the images are embedded as bytes: an image root to extract them under is "
                             "needed (silkie.sample.image_root)")
        extracted = extract_row_images(path, "vlfeedback", [n for n in numbers if n is not None], image_root)
        for index, number in enumerate(numbers):
            relative, why = extracted.get(number, (None, "row not found"))
            if relative is None:
                raise ValueError(f"{path}: row {number} (id {instructions[index].id!r}): field 'image': {why}")
            instructions[index] = Instruction(id=instructions[index].id, prompt=instructions[index].prompt,
                                              image=relative)
    return sorted(instructions, key=lambda instruction: instruction.id)
