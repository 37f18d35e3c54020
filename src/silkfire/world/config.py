"""The shapes world's configuration: a frozen dataclass built from a mapping (Hydra group ``world``)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Shapes the renderer knows how to draw; a config may use any subset of them.
SUPPORTED_SHAPES = ("circle", "square", "triangle")
# Colours closer than this (Euclidean RGB) to each other or to the background are refused: a tiny model looking
# at small patches must be able to tell them apart.
MIN_COLOR_DISTANCE = 100.0

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class WorldConfig:
    """Everything that shapes a generated world, its seed included.

    The world has its own seed, apart from the pipeline's global ``seed``: whole-pipeline seed sweeps vary model
    init and data order while every seed is trained and scored on the same scenes and benchmark items, which is
    what makes per-item paired comparisons across seeds possible.

    Mappings of the YAML (``colors``, ``sizes``) are stored as tuples of (name, value) pairs sorted by name,
    so the config stays hashable and does not depend on key order; :meth:`to_dict` gives back the YAML shape.
    """

    seed: int = 0
    image_size: int = 48  # divisible by rows and cols: each cell is exactly one vision patch of the tiny model
    row_names: tuple[str, ...] = ("top", "middle", "bottom")
    col_names: tuple[str, ...] = ("left", "center", "right")
    min_objects: int = 1
    max_objects: int = 4
    shapes: tuple[str, ...] = SUPPORTED_SHAPES
    colors: tuple[tuple[str, RGB], ...] = (
        ("red", (230, 40, 40)),
        ("green", (40, 170, 60)),
        ("blue", (40, 80, 230)),
        ("yellow", (240, 200, 30)),
    )
    sizes: tuple[tuple[str, float], ...] = (("small", 0.5), ("large", 0.85))
    background: RGB = (255, 255, 255)
    train_scenes: int = 2000
    val_scenes: int = 100
    test_scenes: int = 120
    probe_rate: float = 0.5
    max_draws: int = 1000

    def __post_init__(self) -> None:
        # Mappings are kept sorted by name: YAML/JSON key order (the manifest is written key-sorted) must not
        # change which colour or size a seeded draw picks.
        object.__setattr__(self, "colors", tuple(sorted(self.colors)))
        object.__setattr__(self, "sizes", tuple(sorted(self.sizes)))
        _validate(self)

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | Any) -> WorldConfig:
        """Build from a dict or an OmegaConf DictConfig; unknown keys and bad values raise ``ValueError``."""
        data = _to_plain_dict(cfg)
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"world config: unknown key(s) {unknown}; allowed keys are {sorted(known)} "
                "(see conf/world/shapes.yaml)"
            )
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            kwargs[key] = _coerce(key, value)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-friendly form (the shape of conf/world/shapes.yaml); ``from_mapping`` round-trips it."""
        return {
            "seed": self.seed,
            "image_size": self.image_size,
            "row_names": list(self.row_names),
            "col_names": list(self.col_names),
            "min_objects": self.min_objects,
            "max_objects": self.max_objects,
            "shapes": list(self.shapes),
            "colors": {name: list(rgb) for name, rgb in self.colors},
            "sizes": {name: fraction for name, fraction in self.sizes},
            "background": list(self.background),
            "train_scenes": self.train_scenes,
            "val_scenes": self.val_scenes,
            "test_scenes": self.test_scenes,
            "probe_rate": self.probe_rate,
            "max_draws": self.max_draws,
        }

    # ---- derived views ------------------------------------------------------------------------------------
    @property
    def color_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.colors)

    @property
    def size_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.sizes)

    @property
    def rows(self) -> int:
        return len(self.row_names)

    @property
    def cols(self) -> int:
        return len(self.col_names)

    def rgb(self, color: str) -> RGB:
        return dict(self.colors)[color]

    def size_fraction(self, size: str) -> float:
        return dict(self.sizes)[size]

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.train_scenes, "val": self.val_scenes, "test": self.test_scenes}


def _to_plain_dict(cfg: Any) -> dict[str, Any]:
    try:  # OmegaConf is optional here: plain dicts need no import
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra/dvc
        pass
    if not isinstance(cfg, Mapping):
        raise ValueError(f"world config: expected a mapping, got {type(cfg).__name__}")
    return dict(cfg)


def _coerce(key: str, value: Any) -> Any:
    """Turn YAML values (lists, dicts) into the dataclass field types, with errors naming the key."""
    try:
        if key in ("row_names", "col_names", "shapes"):
            return tuple(str(item) for item in value)
        if key == "colors":
            return tuple((str(name), _rgb(rgb)) for name, rgb in dict(value).items())
        if key == "sizes":
            return tuple((str(name), float(fraction)) for name, fraction in dict(value).items())
        if key == "background":
            return _rgb(value)
        if key == "probe_rate":
            return float(value)
        return int(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"world config: bad value for {key!r}: {value!r} ({error})") from error


def _rgb(value: Any) -> RGB:
    items = [int(channel) for channel in value]
    if len(items) != 3 or not all(0 <= channel <= 255 for channel in items):
        raise ValueError(f"expected [r, g, b] with channels in 0..255, got {value!r}")
    return (items[0], items[1], items[2])


def _validate(config: WorldConfig) -> None:
    problems: list[str] = []
    if config.image_size < 16:
        problems.append(f"image_size must be >= 16, got {config.image_size}")
    if not config.row_names or not config.col_names:
        problems.append("row_names and col_names must be non-empty")
    words = list(config.row_names) + list(config.col_names)
    if len(set(config.row_names)) != len(config.row_names) or len(set(config.col_names)) != len(config.col_names):
        problems.append("row_names and col_names must not repeat a word")
    if any(not word or " " in word for word in words):
        problems.append("row/col names must be single words")
    unknown_shapes = sorted(set(config.shapes) - set(SUPPORTED_SHAPES))
    if unknown_shapes or not config.shapes or len(set(config.shapes)) != len(config.shapes):
        problems.append(f"shapes must be distinct names from {list(SUPPORTED_SHAPES)}, got {list(config.shapes)}")
    if len(config.colors) < 2 or len(set(config.color_names)) != len(config.colors):
        problems.append("colors must name at least 2 distinct colours")
    if not config.sizes or any(not 0.2 <= fraction <= 1.0 for _, fraction in config.sizes):
        problems.append("sizes must map each size name to a fraction of the grid cell in [0.2, 1.0]")
    if not 1 <= config.min_objects <= config.max_objects:
        problems.append(f"need 1 <= min_objects <= max_objects, got {config.min_objects}..{config.max_objects}")
    cells = len(config.row_names) * len(config.col_names)
    # An empty cell and an absent colour+shape must always exist, or some yes/no pairs have no "No".
    if config.max_objects >= cells:
        problems.append(f"max_objects must be < the number of grid cells ({cells}), got {config.max_objects}")
    if config.max_objects >= len(config.colors) * len(config.shapes):
        problems.append("max_objects must be < (number of colours) x (number of shapes)")
    for key, count in config.split_sizes().items():
        if count < 0:
            problems.append(f"{key}_scenes must be >= 0, got {count}")
    if config.test_scenes < 1:
        problems.append("test_scenes must be >= 1 (the held-out benchmark needs scenes)")
    if not 0.0 <= config.probe_rate <= 1.0:
        problems.append(f"probe_rate must be in [0, 1], got {config.probe_rate}")
    if config.max_draws < 1:
        problems.append("max_draws must be >= 1")
    palette = list(config.colors) + [("background", config.background)]
    for (name_a, rgb_a), (name_b, rgb_b) in itertools.combinations(palette, 2):
        if math.dist(rgb_a, rgb_b) < MIN_COLOR_DISTANCE:
            problems.append(
                f"colours {name_a} {list(rgb_a)} and {name_b} {list(rgb_b)} are too close "
                f"(RGB distance < {MIN_COLOR_DISTANCE:g}); pick colours further apart"
            )
    if problems:
        raise ValueError("world config: " + "; ".join(problems))
