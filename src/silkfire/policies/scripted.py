"""Scripted policies of the shapes world: each reads the scene graph and fails in one known way.

They stand in for the 12 VLMs of VLFeedback's pool, whose responses differ in helpfulness and faithfulness.
Because each profile's failure is known, a judge's ratings (and what DPO learns from the pairs) can be checked:

- ``correct``: the reference answer.
- ``hallucinate``: affirms absent things: says Yes to existence/position questions, invents a colour or place
  for an absent object (probes), counts an absent shape as 1, adds an object that is not there to descriptions.
- ``miscount``: off-by-one counts, flipped count/sum/comparison answers, a description with an object missing
  (or one duplicated).
- ``wrong_color``: a wrong colour in colour answers and in one object of a description; flipped colour questions.
- ``terse``: right but minimal: uninformative descriptions ("Some shapes.") and probe answers ("None.").
- ``verbose``: the right answer followed by the full scene description.

MMHal-style questions (family ``mmhal``): descriptions ("holistic") as above; otherwise the reference answer,
to which ``hallucinate`` adds an object that is not there.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from silkfire.policies.base import Instruction, PolicyError
from silkfire.policies.instructions import MMHAL_FAMILY
from silkfire.world import templates as t
from silkfire.world.config import WorldConfig
from silkfire.world.questions import describe, position_of
from silkfire.world.scene import Scene, WorldObject

PROFILES = ("correct", "hallucinate", "miscount", "wrong_color", "terse", "verbose")
# Yes/No categories each failing profile gets wrong (it answers the opposite of the truth).
FLIPS: dict[str, frozenset[str]] = {
    "hallucinate": frozenset({"existence", "position"}),  # only when the truth is No: it affirms
    "miscount": frozenset({"count", "numerical_calculation", "comparison"}),
    "wrong_color": frozenset({"color"}),
}


def _flip(answer: str) -> str:
    return t.NO if answer.strip().lower() == "yes" else t.YES


def _phrases(objects: Sequence[WorldObject], config: WorldConfig) -> list[str]:
    ordered = sorted(objects, key=lambda obj: (obj.row, obj.col))
    return [t.object_phrase(obj.size, obj.color, obj.shape, position_of(config, obj), first=index == 0)
            for index, obj in enumerate(ordered)]


def _empty_cells(scene: Scene, config: WorldConfig) -> list[tuple[int, int]]:
    taken = {(obj.row, obj.col) for obj in scene.objects}
    return [(r, c) for r in range(config.rows) for c in range(config.cols) if (r, c) not in taken]


def _random_cell_phrase(config: WorldConfig, rng: random.Random) -> str:
    return t.position_phrase(rng.choice(config.row_names), rng.choice(config.col_names))


def _invented_object(scene: Scene, config: WorldConfig, rng: random.Random) -> WorldObject | None:
    """An object the scene does not have (a colour+shape it lacks, in an empty cell), or None if none fits."""
    present = {(obj.color, obj.shape) for obj in scene.objects}
    absent = [(c, s) for c in config.color_names for s in config.shapes if (c, s) not in present]
    cells = _empty_cells(scene, config)
    if not absent or not cells:
        return None
    color, shape = rng.choice(absent)
    row, col = rng.choice(cells)
    return WorldObject(shape, color, rng.choice(config.size_names), row, col)


class ScriptedPolicy:
    """One failure profile over world instructions (needs each instruction's scene graph)."""

    def __init__(self, profile: str, config: WorldConfig, name: str | None = None):
        if profile not in PROFILES:
            raise ValueError(f"unknown scripted profile {profile!r}; profiles are {list(PROFILES)}")
        self.profile = profile
        self.config = config
        self.name = name or profile

    def describe(self) -> dict[str, Any]:
        return {"kind": "scripted", "profile": self.profile}

    def respond(self, instructions: Sequence[Instruction], image_root: Path, seed: int) -> list[str]:
        return [self.answer(instruction, seed) for instruction in instructions]

    def answer(self, instruction: Instruction, seed: int) -> str:
        scene = instruction.scene
        if scene is None or instruction.answer is None or instruction.category is None:
            raise PolicyError(
                f"scripted policy {self.name!r} needs a world instruction (scene graph, category, answer); "
                f"instruction {instruction.id!r} has none: use model/API policies for real prompts"
            )
        rng = random.Random(f"silkfire-policy/{seed}/{self.name}/{instruction.id}")
        handler: Callable[[Instruction, Scene, random.Random], str]
        if instruction.family == "mme":
            handler = self._yes_no
        elif instruction.family == "probe":
            handler = self._probe
        elif instruction.family == MMHAL_FAMILY:
            handler = self._describe if instruction.category == "holistic" else self._mmhal
        else:
            handler = {"count": self._count, "color": self._color, "describe": self._describe}.get(
                instruction.category, self._plain)
        text = handler(instruction, scene, rng)
        if self.profile == "verbose" and handler != self._describe:  # a description already says it all
            text = f"{text}{'' if text.endswith('.') else '.'} {describe(scene, self.config)}"
        return text

    # ---- one handler per question kind -------------------------------------------------------------------------
    def _yes_no(self, instruction: Instruction, scene: Scene, rng: random.Random) -> str:
        truth = t.YES if instruction.answer.strip().lower() == "yes" else t.NO  # type: ignore[union-attr]
        flips = FLIPS.get(self.profile, frozenset())
        if instruction.category in flips and not (self.profile == "hallucinate" and truth == t.YES):
            return _flip(truth)
        return truth

    def _probe(self, instruction: Instruction, scene: Scene, rng: random.Random) -> str:
        if self.profile == "hallucinate":  # answers as if the absent object were there
            if instruction.category == "color":
                return t.a_color(rng.choice(self.config.color_names))
            return t.a_where(_random_cell_phrase(self.config, rng))
        if self.profile == "terse":
            return "None."
        return str(instruction.answer)

    def _count(self, instruction: Instruction, scene: Scene, rng: random.Random) -> str:
        truth = int(str(instruction.answer))
        if self.profile == "miscount":
            return t.a_count(truth + 1 if truth == 0 or rng.random() < 0.5 else truth - 1)
        if self.profile == "hallucinate" and truth == 0:
            return t.a_count(1)
        return t.a_count(truth)

    def _color(self, instruction: Instruction, scene: Scene, rng: random.Random) -> str:
        if self.profile == "wrong_color":
            truth = str(instruction.answer)
            return t.a_color(rng.choice([c for c in self.config.color_names if c != truth]))
        return str(instruction.answer)

    def _plain(self, instruction: Instruction, scene: Scene, rng: random.Random) -> str:
        return str(instruction.answer)

    def _mmhal(self, instruction: Instruction, scene: Scene, rng: random.Random) -> str:
        text = str(instruction.answer)
        invented = _invented_object(scene, self.config, rng) if self.profile == "hallucinate" else None
        if invented is None:
            return text
        phrase = t.object_phrase(invented.size, invented.color, invented.shape, position_of(self.config, invented),
                                 first=False)
        return f"{text} There is also {phrase}."

    def _describe(self, instruction: Instruction, scene: Scene, rng: random.Random) -> str:
        objects = list(scene.objects)
        if self.profile == "terse":
            return "Some shapes."
        if self.profile == "hallucinate":
            invented = _invented_object(scene, self.config, rng)
            if invented is not None:
                objects.append(invented)
        elif self.profile == "miscount":
            cells = _empty_cells(scene, self.config)
            if len(objects) > 1:
                objects.pop(rng.randrange(len(objects)))
            elif cells:
                twin = objects[0]
                row, col = rng.choice(cells)
                objects.append(WorldObject(twin.shape, twin.color, twin.size, row, col))
        elif self.profile == "wrong_color":
            index = rng.randrange(len(objects))
            obj = objects[index]
            color = rng.choice([c for c in self.config.color_names if c != obj.color])
            objects[index] = WorldObject(obj.shape, color, obj.size, obj.row, obj.col)
        text = t.a_describe(_phrases(objects, self.config))
        if self.profile == "verbose":
            text += f" There {'is' if len(objects) == 1 else 'are'} {len(objects)} " \
                    f"{'object' if len(objects) == 1 else 'objects'} in the image."
        return text
