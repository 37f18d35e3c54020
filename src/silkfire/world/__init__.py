"""Silkfire: world — the embedded shapes world (scenes, images, question families with known answers)."""

from silkfire.world.config import WorldConfig
from silkfire.world.build import generate_world
from silkfire.world.questions import CATEGORY_GROUPS, MME_CATEGORIES, describe, scene_questions
from silkfire.world.render import render_scene
from silkfire.world.scene import Scene, WorldObject, scene_from_record, scene_signature
from silkfire.world.texts import world_texts

__all__ = [
    "CATEGORY_GROUPS",
    "MME_CATEGORIES",
    "Scene",
    "WorldConfig",
    "WorldObject",
    "describe",
    "generate_world",
    "render_scene",
    "scene_from_record",
    "scene_questions",
    "scene_signature",
    "world_texts",
]
