"""The world suite: the generate stage's output checked against the data contract before anything trains on it.

Files: scenes.jsonl, train.jsonl, val.jsonl, mme.jsonl, mme_val.jsonl, open.jsonl under ``world_dir`` (images resolved
against ``world_dir``). Every check, including the ones computed in Python (images, Yes/No pairs, split
leaks), is asserted through Great Expectations, so one Data Docs site shows them all.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from silkfire.quality import derive
from silkfire.quality.config import QualityConfig
from silkfire.quality.gate import (
    Check,
    PreparedTable,
    Suite,
    between,
    compound_unique,
    in_set,
    is_ok,
    matches,
    max_length,
    run_gate,
    unique,
)
from silkfire.quality.kinds import schema_checks, token_checks
from silkfire.quality.profile import build_profile, compare, count_values, drift_table, load_profile, write_profile
from silkfire.quality.frames import LoadedRecords, load_records, records_frame
from silkfire.quality.report import GateResult

SPLITS = ("train", "val", "test")
SCENES, TRAIN, VAL, MME, OPEN = "scenes.jsonl", "train.jsonl", "val.jsonl", "mme.jsonl", "open.jsonl"
MME_VAL = "mme_val.jsonl"
WORLD_FILES = (SCENES, TRAIN, VAL, MME, MME_VAL, OPEN)
TABLES = {SCENES: "world.scenes", TRAIN: "world.train", VAL: "world.val", MME: "world.mme",
          MME_VAL: "world.mme_val", OPEN: "world.open"}
MME_SPLITS = {MME: "test", MME_VAL: "val"}  # the MME-style benchmark of each split's scenes

# field -> type ("text": a non-blank string; see silkfire.quality.frames.records_frame)
SCENE_SCHEMA = {
    "scene_id": "text", "split": "text", "image": "text", "width": "int", "height": "int", "objects": "list",
}
INSTRUCTION_SCHEMA = {
    "id": "text", "scene_id": "text", "image": "text", "family": "text", "category": "text", "question": "text",
    "answer": "text",
}
MME_SCHEMA = {"question_id": "text", "image": "text", "category": "text", "question": "text", "answer": "text"}
OBJECT_FIELDS = {"shape": str, "color": str, "size": str, "row": int, "col": int}

REGENERATE = (
    "regenerate the world (the generate stage) and validate again; if it happens again, the generator has a bug"
)
IMAGE_HINT = (
    "image paths must be relative to the world folder, stay inside it (no '..', no absolute path, no symlink "
    "out of it) and name a decodable RGB PNG of the configured size; " + REGENERATE
)


def validate_world(
    world_dir: str | Path,
    config: QualityConfig,
    report_dir: str | Path,
    *,
    progress: bool = False,
    previous_profile: str | Path | None = None,
) -> GateResult:
    """Validate a generated world; write ``validation.json``, ``report.txt``, ``data_docs/`` and ``profile.json``
    (plus ``quarantine.jsonl`` and ``clean/`` under policy filter) to ``report_dir``.

    ``previous_profile``: the ``profile.json`` of the previous world version; its Yes/No balances and answer
    distributions are compared with this one's (``quality.drift``). Returns the :class:`GateResult`
    (``result.raise_if_failed()`` turns a failure into ``GateFailed``).
    """
    start = time.perf_counter()
    world_dir = Path(world_dir)
    report_dir = Path(report_dir)
    previous = load_profile(previous_profile) if previous_profile is not None else None  # before overwriting it
    size, mode = config.image_shape_for("world")
    images = derive.ImageChecker(world_dir, size=size, mode=mode, max_pixels=config.max_image_pixels or None,
                                 workers=config.workers, progress=progress)
    check_images = config.images_for("world")

    loaded = {name: load_records(world_dir / name) for name in WORLD_FILES}
    scenes = loaded[SCENES]
    scene_split, scene_image = _scene_maps(scenes)
    manifest = _manifest_config(world_dir)

    prepared: list[PreparedTable] = []
    counts: dict[str, Counter[str]] = {}
    for name, loaded_file in loaded.items():
        if loaded_file.error:
            prepared.append(PreparedTable(TABLES[name], loaded_file, hint=REGENERATE))
            continue
        if name == SCENES:
            frame, suite = _scenes_table(loaded_file, config, images, manifest, check_images)
            group = None
        elif name in MME_SPLITS:
            frame, suite = _mme_table(loaded_file, config, images, scene_split, scene_image, check_images,
                                      split=MME_SPLITS[name], table=TABLES[name])
            group = "question_id"  # under policy filter a Yes/No pair goes together
            counts[f"{TABLES[name]}.answer"] = count_values(frame["answer"])
            counts[f"{TABLES[name]}.category"] = count_values(frame["category"])
        else:
            split = {TRAIN: "train", VAL: "val", OPEN: "test"}[name]
            frame, suite = _instruction_table(loaded_file, split, config, images, scene_split, scene_image,
                                              check_images)
            group = None
            for family, rows in frame.groupby("family", sort=True, observed=True):
                counts[f"{TABLES[name]}.answer.{family}"] = count_values(rows["answer"])
        suite = Suite(suite.name, suite.checks + tuple(token_checks(frame, ("question", "answer"), "world", config)))
        prepared.append(PreparedTable(suite.name, loaded_file, frame, suite, group=group))
    profile = build_profile("world", counts, config.drift)
    stats: dict[str, Any] = {
        "world_dir": str(world_dir),
        "records": sum(len(item.records) for item in loaded.values()),
        "images_checked": images.checked,
        "load_and_derive_s": round(time.perf_counter() - start, 3),
        "policy": config.policy_for("world"),
    }
    if previous is not None:
        drift = compare(profile, previous, config.drift)
        stats["drift"] = drift
        if drift:
            prepared.append(drift_table("world", drift, Path(previous_profile)))  # type: ignore[arg-type]
    else:
        stats["drift"] = "no previous profile (first version): distributions recorded, not compared"
    stats["profile"] = str(write_profile(report_dir, profile))
    return run_gate(
        "world", prepared, report_dir=report_dir, max_examples=config.max_examples, max_lines=config.max_lines,
        stats=stats, started=start, policy=config.policy_for("world"),
        max_quarantine_fraction=config.max_quarantine_fraction, data_docs=config.data_docs,
    )


# ---- shared pieces -----------------------------------------------------------------------------------------------
def _schema_checks(schema: Mapping[str, str], config: QualityConfig) -> list[Check]:
    checks = schema_checks(schema, "the world data contract says so; " + REGENERATE)
    for name in ("question", "answer"):
        if name in schema:
            checks.append(max_length(name, config.max_text_length,
                                     f"{name!r} has at most {config.max_text_length} characters",
                                     "shorten the text or raise quality.max_text_length"))
    return checks


def _scene_maps(scenes: LoadedRecords) -> tuple[dict[str, Any], dict[str, Any]]:
    split: dict[str, Any] = {}
    image: dict[str, Any] = {}
    for record in scenes.records:
        scene_id = record.get("scene_id")
        if isinstance(scene_id, str) and scene_id not in split:
            split[scene_id] = record.get("split")
            image[scene_id] = record.get("image")
    return split, image


def _manifest_config(world_dir: Path) -> dict[str, Any] | None:
    """The world config recorded in manifest.json, for the object vocabulary; None when unreadable."""
    import json

    try:
        manifest = json.loads((world_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    config = manifest.get("config") if isinstance(manifest, dict) else None
    return config if isinstance(config, dict) else None


def _image_checks(
    frame: pd.DataFrame, images: derive.ImageChecker, config: QualityConfig, enabled: bool = True
) -> list[Check]:
    if not enabled:
        return []
    frame["image__status"] = images.statuses(frame["image"].tolist())
    size, mode = config.image_shape_for("world")
    shape = f"{size[0]}x{size[1]}" if size else "any size"
    return [
        is_ok("image__status",
              f"'image' is a relative path inside the world folder to a decodable {mode or ''} image of "
              f"{shape} pixels", IMAGE_HINT)
    ]


def _scene_image_check(frame: pd.DataFrame, scene_ids: Sequence[Any], scene_image: Mapping[str, Any]) -> Check:
    def status(pair: tuple[Any, Any]) -> str | None:
        scene_id, image = pair
        if derive.is_null(scene_id) or derive.is_null(image) or scene_id not in scene_image:
            return None  # unknown scenes are reported by the split check
        expected = scene_image[scene_id]
        return derive.OK if image == expected else f"scenes.jsonl gives {expected!r} for scene {scene_id!r}"

    frame["image__scene"] = [status(pair) for pair in zip(scene_ids, frame["image"].tolist())]
    return is_ok("image__scene", "'image' is the image of the record's scene in scenes.jsonl", REGENERATE)


# ---- scenes.jsonl ------------------------------------------------------------------------------------------------
def _scenes_table(
    loaded: LoadedRecords, config: QualityConfig, images: derive.ImageChecker, manifest: dict[str, Any] | None,
    check_images: bool = True,
) -> tuple[pd.DataFrame, Suite]:
    frame = records_frame(loaded, SCENE_SCHEMA)
    checks = _schema_checks(SCENE_SCHEMA, config)
    checks += [
        unique("scene_id", "every scene_id is unique", REGENERATE),
        in_set("split", SPLITS, f"'split' is one of {list(SPLITS)}", REGENERATE),
        between("width", config.image_size, config.image_size,
                f"'width' is the configured image size {config.image_size}",
                "set quality.image_size to world.image_size, or regenerate the world"),
        between("height", config.image_size, config.image_size,
                f"'height' is the configured image size {config.image_size}",
                "set quality.image_size to world.image_size, or regenerate the world"),
    ]
    frame["image__name"] = [
        None if derive.is_null(scene_id) or derive.is_null(image)
        else (derive.OK if image == f"images/{scene_id}.png" else f"expected 'images/{scene_id}.png'")
        for scene_id, image in zip(frame["scene_id"].tolist(), frame["image"].tolist())
    ]
    checks.append(is_ok("image__name", "'image' is images/<scene_id>.png", REGENERATE))
    checks += _image_checks(frame, images, config, check_images)
    frame["objects__status"] = derive.per_row(frame["objects"].tolist(), lambda items: _objects_status(items, manifest))
    checks.append(is_ok("objects__status",
                        "'objects' is a non-empty list of {shape, color, size, row, col} within the world's vocabulary "
                        "and grid (manifest.json config)", REGENERATE))
    return frame, Suite(TABLES[SCENES], tuple(checks))


def _objects_status(objects: list[Any], manifest: dict[str, Any] | None) -> str:
    if not objects:
        return "no objects"
    vocab: dict[str, set[Any]] = {}
    limits: dict[str, int] = {}
    if manifest:
        vocab = {
            "shape": set(manifest.get("shapes") or []),
            "color": set(manifest.get("colors") or {}),
            "size": set(manifest.get("sizes") or {}),
        }
        limits = {"row": len(manifest.get("row_names") or []), "col": len(manifest.get("col_names") or [])}
    cells = set()
    for number, obj in enumerate(objects):
        if not isinstance(obj, dict):
            return f"object {number} is not an object"
        for key, kind in OBJECT_FIELDS.items():
            value = obj.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                return f"object {number}: {key!r} missing or not {kind.__name__}"
            if kind is int and not 0 <= value < (limits.get(key) or 10**9):
                return f"object {number}: {key} {value} outside the grid"
            if vocab.get(key) and value not in vocab[key]:
                return f"object {number}: unknown {key} {value!r}"
        cell = (obj["row"], obj["col"])
        if cell in cells:
            return f"object {number}: cell {cell} holds two objects"
        cells.add(cell)
    return derive.OK


# ---- train.jsonl / val.jsonl / open.jsonl ------------------------------------------------------------------------
def _instruction_table(
    loaded: LoadedRecords,
    split: str,
    config: QualityConfig,
    images: derive.ImageChecker,
    scene_split: Mapping[str, Any],
    scene_image: Mapping[str, Any],
    check_images: bool = True,
) -> tuple[pd.DataFrame, Suite]:
    world = config.world
    families = world.family_categories
    frame = records_frame(loaded, INSTRUCTION_SCHEMA)
    checks = _schema_checks(INSTRUCTION_SCHEMA, config)
    checks += [
        unique("id", "every id is unique", REGENERATE),
        in_set("family", list(families), f"'family' is one of {list(families)}",
               "use a known family or add it to quality.world.families"),
    ]
    frame["category__family"] = [
        None if derive.is_null(family) or derive.is_null(category) or family not in families
        else (derive.OK if category in families[family] else f"{category!r} is not a category of family {family!r}")
        for family, category in zip(frame["family"].tolist(), frame["category"].tolist())
    ]
    checks.append(is_ok("category__family", "'category' is one of the categories of the record's family",
                        "use a known category or add it to quality.world.families"))
    is_mme = [family == "mme" for family in frame["family"].tolist()]
    frame["answer__mme"] = [answer if mme else None for answer, mme in zip(frame["answer"].tolist(), is_mme)]
    frame["question__mme"] = [question if mme else None for question, mme in zip(frame["question"].tolist(), is_mme)]
    checks += [
        in_set("answer__mme", world.answers, f"answers of the mme family are exactly {list(world.answers)}",
               REGENERATE),
        matches("question__mme", _suffix_regex(world.mme_suffix),
                f"questions of the mme family end with {world.mme_suffix.strip()!r}", REGENERATE),
    ]
    name = TABLES[{"train": TRAIN, "val": VAL, "test": OPEN}[split]]
    scene_ids = frame["scene_id"].tolist()
    frame["scene_id__split"] = derive.lookup_status(scene_ids, scene_split, [split], "scene")
    checks.append(
        is_ok("scene_id__split", f"'scene_id' names a {split} scene of scenes.jsonl (no scene of another split leaks "
              f"into {name.split('.')[1]})", "move the record to the file of its scene's split; " + REGENERATE)
    )
    checks.append(_scene_image_check(frame, scene_ids, scene_image))
    checks += _image_checks(frame, images, config, check_images)
    return frame, Suite(name, tuple(checks))


# ---- mme.jsonl / mme_val.jsonl -------------------------------------------------------------------------------------
def _mme_table(
    loaded: LoadedRecords,
    config: QualityConfig,
    images: derive.ImageChecker,
    scene_split: Mapping[str, Any],
    scene_image: Mapping[str, Any],
    check_images: bool = True,
    split: str = "test",
    table: str = TABLES[MME],
) -> tuple[pd.DataFrame, Suite]:
    world = config.world
    frame = records_frame(loaded, MME_SCHEMA)
    checks = _schema_checks(MME_SCHEMA, config)
    answers = list(world.answers)
    checks += [
        in_set("answer", answers, f"'answer' is exactly one of {answers}", REGENERATE),
        in_set("category", world.mme_categories, f"'category' is an MME category {list(world.mme_categories)}",
               "use a known category or add it to quality.world.families.mme"),
        matches("question", _suffix_regex(world.mme_suffix), f"'question' ends with {world.mme_suffix.strip()!r}",
                REGENERATE),
        compound_unique(["question_id", "answer"], "(question_id, answer) is unique", REGENERATE),
    ]
    keys = frame["question_id"].tolist()
    frame["question_id__rows"] = derive.group_sizes(keys)
    frame["answer__pair"] = derive.group_composition(keys, frame["answer"].tolist(), {a: 1 for a in answers})
    checks += [
        between("question_id__rows", 2, 2, "exactly 2 records share each question_id", REGENERATE),
        is_ok("answer__pair", f"each question_id has exactly one {answers[0]!r} and one {answers[-1]!r} answer",
              REGENERATE, field="answer"),
    ]
    scene_ids = []
    status = []
    for question_id, category in zip(keys, frame["category"].tolist()):
        if derive.is_null(question_id):
            scene_ids.append(None)
            status.append(None)
            continue
        prefix, _, scene_id = question_id.partition("/")
        scene_ids.append(scene_id or None)
        if not scene_id:
            status.append("not '<category>/<scene_id>'")
        elif not derive.is_null(category) and prefix != category:
            status.append(f"category part {prefix!r} differs from category {category!r}")
        elif scene_id not in scene_split:
            status.append(f"unknown scene {scene_id!r}")
        elif scene_split[scene_id] != split:
            status.append(f"scene {scene_id!r} is {scene_split[scene_id]!r}, expected {split!r}")
        else:
            status.append(derive.OK)
    frame["question_id__scene"] = status
    checks.append(is_ok("question_id__scene",
                        f"'question_id' is '<category>/<scene_id>' of a {split} scene in scenes.jsonl",
                        REGENERATE))
    checks.append(_scene_image_check(frame, scene_ids, scene_image))
    checks += _image_checks(frame, images, config, check_images)
    return frame, Suite(table, tuple(checks))


def _suffix_regex(suffix: str) -> str:
    import re

    return re.escape(suffix) + r"$"


__all__ = ["WORLD_FILES", "validate_world"]
