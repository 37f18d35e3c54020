"""The generate stage: write a whole shapes world (images, scene graphs, question sets, manifest)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from silkfire.io import write_json, write_jsonl
from silkfire.world.config import WorldConfig
from silkfire.world.questions import CATEGORY_GROUPS, FAMILIES, QA, scene_questions
from silkfire.world.render import render_scene, save_png
from silkfire.world.scene import SPLITS, Scene, sample_world_scenes

# Bump when the layout or the meaning of the files changes (downstream checks can refuse old worlds).
WORLD_FORMAT_VERSION = 1
# mme.jsonl / open.jsonl: the held-out test benchmarks (test scenes); mme_val.jsonl: the same MME-style pairs on the
# val scenes, for every choice (sweeps, grids, the champion gate) so that the test set is read for final figures only.
OUTPUT_FILES = ("scenes.jsonl", "train.jsonl", "val.jsonl", "mme.jsonl", "mme_val.jsonl", "open.jsonl",
                "manifest.json")


def _instruction(scene: Scene, qa: QA, index: int) -> dict[str, Any]:
    """A train/val/open record; ids are '<scene_id>/<family>/<category>/<n>' (n counts within the scene)."""
    return {
        "id": f"{scene.scene_id}/{qa.family}/{qa.category}/{index}",
        "scene_id": scene.scene_id,
        "image": scene.image,
        "family": qa.family,
        "category": qa.category,
        "question": qa.question,
        "answer": qa.answer,
        **({"rationale": qa.rationale} if qa.rationale else {}),
    }


def _mme_record(scene: Scene, qa: QA) -> dict[str, Any]:
    """An lmms-lab/MME-style record; both questions of a (scene, category) share the question_id."""
    return {
        "question_id": f"{qa.category}/{scene.scene_id}",
        "image": scene.image,
        "category": qa.category,
        "question": qa.question,
        "answer": qa.answer,
    }


def _indexed(scene: Scene, questions: list[QA]) -> list[dict[str, Any]]:
    seen: Counter[tuple[str, str]] = Counter()
    records = []
    for qa in questions:
        key = (qa.family, qa.category)
        records.append(_instruction(scene, qa, seen[key]))
        seen[key] += 1
    return records


def _empty_counts() -> dict[str, dict[str, int]]:
    return {family: {} for family in FAMILIES}


def _tally(table: dict[str, dict[str, int]], family: str, category: str) -> None:
    table[family][category] = table[family].get(category, 0) + 1


def generate_world(config: WorldConfig, out_dir: Path, seed: int | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Write the world described by ``config`` (and ``seed``, default ``config.seed``) to ``out_dir``; return the
    manifest's counts.

    Same config and seed give byte-identical files. Stale ``images/*.png`` left by an earlier generation in
    ``out_dir`` are removed so the folder holds exactly this world.
    """
    out_dir = Path(out_dir)
    seed = config.seed if seed is None else int(seed)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    scenes, rejected = sample_world_scenes(config, seed)

    scene_records: list[dict[str, Any]] = []
    instructions: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    mme_records: dict[str, list[dict[str, Any]]] = {"val": [], "test": []}
    records = {split: _empty_counts() for split in SPLITS}
    fallbacks: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
    skipped: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
    objects: dict[str, dict[str, int]] = {
        split: {str(n): 0 for n in range(config.min_objects, config.max_objects + 1)} for split in SPLITS
    }
    written: set[str] = set()

    ordered = [scene for split in SPLITS for scene in scenes[split]]
    for scene in tqdm(ordered, desc="world: scenes", unit="scene", disable=not progress):
        save_png(render_scene(config, scene), images_dir / f"{scene.scene_id}.png")
        written.add(f"{scene.scene_id}.png")
        scene_records.append(scene.to_record(config))
        split = scene.split
        n_objects = str(len(scene.objects))
        objects[split][n_objects] += 1

        mme, open_questions, missing = scene_questions(scene, config, seed)
        assert len(mme) == 2 * len(CATEGORY_GROUPS), "every MME category must give one Yes/No pair"
        for qa in mme + open_questions:
            _tally(records[split], qa.family, qa.category)
        for qa in mme[::2]:
            if qa.variant != "main":
                fallbacks[split][qa.category] = fallbacks[split].get(qa.category, 0) + 1
        for slot in missing:
            skipped[split][slot] = skipped[split].get(slot, 0) + 1
        if split in mme_records:
            mme_records[split].extend(_mme_record(scene, qa) for qa in mme)
        if split == "test":
            instructions["test"].extend(_indexed(scene, open_questions))
        else:  # val scenes' MME pairs stay in val.jsonl too: SFT's eval loss reads it
            instructions[split].extend(_indexed(scene, mme + open_questions))

    for stale in sorted(images_dir.glob("*.png")):
        if stale.name not in written:
            stale.unlink()

    files = {
        "scenes.jsonl": write_jsonl(out_dir / "scenes.jsonl", scene_records),
        "train.jsonl": write_jsonl(out_dir / "train.jsonl", instructions["train"]),
        "val.jsonl": write_jsonl(out_dir / "val.jsonl", instructions["val"]),
        "mme.jsonl": write_jsonl(out_dir / "mme.jsonl", mme_records["test"]),
        "mme_val.jsonl": write_jsonl(out_dir / "mme_val.jsonl", mme_records["val"]),
        "open.jsonl": write_jsonl(out_dir / "open.jsonl", instructions["test"]),
        "images": len(written),
    }
    counts: dict[str, Any] = {
        "scenes": {split: len(scenes[split]) for split in SPLITS},
        "objects_per_scene": objects,
        "records": records,
        "files": files,
        # pairs that used the fallback form of their category (see silkfire.world.questions)
        "mme_fallbacks": fallbacks,
        # open/probe slots with no unambiguous question for a scene (no record written)
        "skipped": skipped,
        # draws refused because they repeated a held-out scene (no overlap between splits)
        "rejected_draws": rejected,
    }
    manifest = {
        "format_version": WORLD_FORMAT_VERSION,
        "seed": seed,
        "config": config.to_dict(),
        "category_groups": dict(CATEGORY_GROUPS),
        "counts": counts,
    }
    write_json(out_dir / "manifest.json", manifest)
    return counts
