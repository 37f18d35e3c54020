"""Scenes of the shapes world: objects on a grid, their canonical signature, and seeded sampling."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from silkfire.world.config import WorldConfig

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, order=True)
class WorldObject:
    """One shape in one grid cell (row 0 = top, col 0 = left)."""

    shape: str
    color: str
    size: str
    row: int
    col: int

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "color": self.color, "size": self.size, "row": self.row, "col": self.col}


@dataclass(frozen=True)
class Scene:
    """A scene graph; ``objects`` are kept in reading order (row, then column) so records are canonical."""

    scene_id: str
    split: str
    objects: tuple[WorldObject, ...]

    @property
    def image(self) -> str:
        return f"images/{self.scene_id}.png"

    def signature(self) -> tuple[tuple[str, str, str, int, int], ...]:
        return scene_signature(self.objects)

    def to_record(self, config: WorldConfig) -> dict[str, Any]:
        """The scenes.jsonl record of the data contract."""
        return {
            "scene_id": self.scene_id,
            "split": self.split,
            "image": self.image,
            "width": config.image_size,
            "height": config.image_size,
            "objects": [obj.to_dict() for obj in self.objects],
        }

    # ---- facts the question families are computed from -----------------------------------------------------
    def shape_counts(self) -> Counter[str]:
        return Counter(obj.shape for obj in self.objects)

    def color_counts(self) -> Counter[str]:
        return Counter(obj.color for obj in self.objects)

    def kind_counts(self) -> Counter[tuple[str, str]]:
        """Counts of (colour, shape) combinations."""
        return Counter((obj.color, obj.shape) for obj in self.objects)

    def at(self, row: int, col: int) -> WorldObject | None:
        for obj in self.objects:
            if (obj.row, obj.col) == (row, col):
                return obj
        return None


def scene_signature(objects: Iterable[WorldObject]) -> tuple[tuple[str, str, str, int, int], ...]:
    """Canonical identity of a scene: its sorted object tuples (ids and object order do not matter)."""
    return tuple(sorted((o.shape, o.color, o.size, o.row, o.col) for o in objects))


def scene_from_record(record: Mapping[str, Any]) -> Scene:
    """Rebuild a :class:`Scene` from a scenes.jsonl record (for oracles and checks downstream)."""
    objects = tuple(
        sorted(
            (
                WorldObject(str(o["shape"]), str(o["color"]), str(o["size"]), int(o["row"]), int(o["col"]))
                for o in record["objects"]
            ),
            key=lambda obj: (obj.row, obj.col),
        )
    )
    return Scene(scene_id=str(record["scene_id"]), split=str(record["split"]), objects=objects)


def sample_objects(config: WorldConfig, rng: random.Random, n_objects: int) -> tuple[WorldObject, ...]:
    """``n_objects`` objects in distinct random cells, in reading order."""
    cells = [(row, col) for row in range(config.rows) for col in range(config.cols)]
    chosen = sorted(rng.sample(cells, n_objects))
    return tuple(
        WorldObject(
            shape=rng.choice(config.shapes),
            color=rng.choice(config.color_names),
            size=rng.choice(config.size_names),
            row=row,
            col=col,
        )
        for row, col in chosen
    )


def sample_split(
    config: WorldConfig,
    split: str,
    count: int,
    rng: random.Random,
    forbidden: set[tuple[Any, ...]],
    unique: bool,
) -> tuple[list[Scene], int]:
    """Draw ``count`` scenes whose signatures are not in ``forbidden``; returns (scenes, rejected draws).

    The number of objects is drawn first and kept while objects are redrawn, so rejection does not shift the
    object-count distribution. With ``unique`` the split's own signatures are forbidden too (held-out sets
    must not count one scene twice). ``forbidden`` is extended with the accepted signatures.
    """
    scenes: list[Scene] = []
    rejected = 0
    for index in range(count):
        n_objects = rng.randint(config.min_objects, config.max_objects)
        for _ in range(config.max_draws):
            objects = sample_objects(config, rng, n_objects)
            signature = scene_signature(objects)
            if signature not in forbidden:
                break
            rejected += 1
        else:
            raise ValueError(
                f"world: could not draw {split} scene {index} with {n_objects} object(s) that is new after "
                f"{config.max_draws} draws; the scene space is too small for the requested scene counts: "
                "lower the *_scenes counts, raise max_draws, or add colours/shapes/sizes/grid cells"
            )
        if unique:
            forbidden.add(signature)
        scenes.append(Scene(scene_id=f"{split}-{index:06d}", split=split, objects=objects))
    return scenes, rejected


def sample_world_scenes(config: WorldConfig, seed: int) -> tuple[dict[str, list[Scene]], dict[str, int]]:
    """All scenes of a world, per split, and the number of rejected draws per split.

    Held-out splits are drawn first (test, then val) and training scenes are rejected when they repeat a
    held-out scene. That guarantees no overlap in either direction, leaves the held-out scenes an unbiased draw
    from the scene prior, and keeps the benchmark the same when only ``train_scenes`` changes. Each split has
    its own seeded stream, so a split depends only on the seed, its own count and the splits drawn before it.
    """
    sizes = config.split_sizes()
    forbidden: set[tuple[Any, ...]] = set()
    scenes: dict[str, list[Scene]] = {}
    rejected: dict[str, int] = {}
    for split in ("test", "val", "train"):
        rng = random.Random(f"silkfire-world/{seed}/{split}/scenes")
        # held-out signatures join `forbidden`; training scenes are only checked against them
        held_out = split != "train"
        scenes[split], rejected[split] = sample_split(config, split, sizes[split], rng, forbidden, unique=held_out)
    return {split: scenes[split] for split in SPLITS}, {split: rejected[split] for split in SPLITS}
