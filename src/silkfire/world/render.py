"""Drawing a scene as an RGB image, and writing it as a byte-stable PNG."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from silkfire.world.config import WorldConfig
from silkfire.world.scene import Scene, WorldObject

# Fixed encoder options: PIL writes no timestamp or other varying chunk, so equal pixels give equal bytes.
PNG_OPTIONS = {"format": "PNG", "optimize": False, "compress_level": 6}


def object_center(config: WorldConfig, obj: WorldObject) -> tuple[float, float]:
    """Centre (x, y) of an object's grid cell, in pixels."""
    cell_w = config.image_size / config.cols
    cell_h = config.image_size / config.rows
    return (obj.col + 0.5) * cell_w, (obj.row + 0.5) * cell_h


def object_box(config: WorldConfig, obj: WorldObject) -> tuple[int, int, int, int]:
    """Integer bounding box (x0, y0, x1, y1), inclusive, of the shape drawn in its cell."""
    cx, cy = object_center(config, obj)
    cell = config.image_size / max(config.rows, config.cols)
    half = config.size_fraction(obj.size) * cell / 2
    return round(cx - half), round(cy - half), round(cx + half) - 1, round(cy + half) - 1


def render_scene(config: WorldConfig, scene: Scene) -> Image.Image:
    """The scene on a plain background; no anti-aliasing, so every shape pixel has its exact colour."""
    image = Image.new("RGB", (config.image_size, config.image_size), config.background)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        fill = config.rgb(obj.color)
        x0, y0, x1, y1 = object_box(config, obj)
        if obj.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif obj.shape == "triangle":  # apex up; the cell centre lies well inside
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
        else:  # WorldConfig validation keeps this unreachable
            raise ValueError(f"render: unknown shape {obj.shape!r}")
    return image


def save_png(image: Image.Image, path: Path) -> None:
    image.save(path, **PNG_OPTIONS)
