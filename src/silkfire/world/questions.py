"""Question families of the shapes world, with ground truth computed from the scene graph.

Every builder is a pure function of (scene, config, rng): the rng only picks *what* to ask; the answer is
always derived from the scene. MME-style categories return a (Yes, No) pair and never fail: when the main
form cannot make both answers for a scene, a fallback form that always can is used (``QA.variant``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from silkfire.world import templates as t
from silkfire.world.config import WorldConfig
from silkfire.world.scene import Scene, WorldObject

PERCEPTION_CATEGORIES = ("existence", "count", "position", "color")
COGNITION_CATEGORIES = ("numerical_calculation", "comparison")
MME_CATEGORIES = PERCEPTION_CATEGORIES + COGNITION_CATEGORIES
# The world's MME categories and their MME group ("comparison" is the world's own; it is cognition).
CATEGORY_GROUPS: dict[str, str] = {
    **{category: "perception" for category in PERCEPTION_CATEGORIES},
    **{category: "cognition" for category in COGNITION_CATEGORIES},
}
OPEN_CATEGORIES = ("count", "color", "position", "describe")
PROBE_CATEGORIES = ("color", "position")
FAMILIES = ("mme", "open", "probe")
# Offsets that turn a true sum into a wrong one in numerical_calculation "No" questions.
SUM_OFFSETS = (-2, -1, 1, 2)


@dataclass(frozen=True)
class QA:
    """One generated question: family/category as in the data contract; variant 'main' or 'fallback'."""

    family: str
    category: str
    question: str
    answer: str
    variant: str = "main"
    rationale: str = ""  # yes/no questions: the scene's truth behind the answer (templates.explained)


def position_of(config: WorldConfig, obj: WorldObject) -> str:
    return t.position_phrase(config.row_names[obj.row], config.col_names[obj.col])


def _cells(config: WorldConfig) -> list[tuple[int, int]]:
    return [(row, col) for row in range(config.rows) for col in range(config.cols)]


def _cell_phrase(config: WorldConfig, cell: tuple[int, int]) -> str:
    return t.position_phrase(config.row_names[cell[0]], config.col_names[cell[1]])


def _pair(category: str, yes: str, no: str, rationales: tuple[str, str],
          variant: str = "main") -> tuple[QA, QA]:
    """The Yes and the No question of one MME image/category, each with its rationale."""
    return (QA("mme", category, yes, t.YES, variant, rationales[0]),
            QA("mme", category, no, t.NO, variant, rationales[1]))


# ---- MME-style categories --------------------------------------------------------------------------------------
def mme_existence(scene: Scene, config: WorldConfig, rng: random.Random) -> tuple[QA, QA]:
    kinds = scene.kind_counts()
    present = [(color, shape) for color in config.color_names for shape in config.shapes if kinds[(color, shape)]]
    absent = [(color, shape) for color in config.color_names for shape in config.shapes if not kinds[(color, shape)]]
    yes, no = rng.choice(present), rng.choice(absent)  # config guarantees an absent kind
    where = next(position_of(config, obj) for obj in scene.objects if (obj.color, obj.shape) == yes)
    return _pair("existence", t.q_existence(*yes), t.q_existence(*no), (t.r_kind_at(*yes, where), t.r_no_kind(*no)))


def mme_count(scene: Scene, config: WorldConfig, rng: random.Random) -> tuple[QA, QA]:
    counts = scene.shape_counts()
    shape = rng.choice([shape for shape in config.shapes if counts[shape]])
    true = counts[shape]
    # The "No" question names the same number for another shape (present or absent) whose count differs: the
    # number then says nothing about the answer and, shapes being exchangeable, neither does the shape. (A wrong
    # number drawn for the same shape made the text alone predict the answer: true counts are mostly 1.)
    others = [other for other in config.shapes if other != shape and counts[other] != true]
    if others:
        other = rng.choice(others)
        return _pair("count", t.q_count(shape, true), t.q_count(other, true),
                     (t.r_count(shape, true), t.r_count(other, counts[other])))
    wrong = rng.choice([n for n in range(1, max(config.max_objects, 2) + 1) if n != true])
    return _pair("count", t.q_count(shape, true), t.q_count(shape, wrong),
                 (t.r_count(shape, true), t.r_count(shape, true)), "fallback")


def mme_position(scene: Scene, config: WorldConfig, rng: random.Random) -> tuple[QA, QA]:
    kinds = scene.kind_counts()
    unique = [obj for obj in scene.objects if kinds[(obj.color, obj.shape)] == 1]
    if unique:
        obj = rng.choice(unique)
        other = rng.choice([cell for cell in _cells(config) if cell != (obj.row, obj.col)])
        truth = t.r_kind_at(obj.color, obj.shape, position_of(config, obj))
        return _pair(
            "position",
            t.q_position(obj.color, obj.shape, position_of(config, obj)),
            t.q_position(obj.color, obj.shape, _cell_phrase(config, other)),
            (truth, truth),
        )
    # No object is unique by colour+shape: ask whether a cell is occupied (an empty cell always exists).
    occupied = {(obj.row, obj.col) for obj in scene.objects}
    full = rng.choice(sorted(occupied))
    empty = rng.choice([cell for cell in _cells(config) if cell not in occupied])
    there = next(obj for obj in scene.objects if (obj.row, obj.col) == full)
    return _pair(
        "position",
        t.q_position_occupied(_cell_phrase(config, full)),
        t.q_position_occupied(_cell_phrase(config, empty)),
        (t.r_occupied(_cell_phrase(config, full), there.color, there.shape), t.r_empty(_cell_phrase(config, empty))),
        "fallback",
    )


def mme_color(scene: Scene, config: WorldConfig, rng: random.Random) -> tuple[QA, QA]:
    counts = scene.shape_counts()
    unique = [obj for obj in scene.objects if counts[obj.shape] == 1]
    if unique:
        obj = rng.choice(unique)
        wrong = rng.choice([color for color in config.color_names if color != obj.color])
        truth = t.r_color(obj.shape, obj.color)
        return _pair("color", t.q_color(obj.shape, obj.color), t.q_color(obj.shape, wrong), (truth, truth))
    # No shape is unique: name the object by its cell instead.
    obj = rng.choice(scene.objects)
    wrong = rng.choice([color for color in config.color_names if color != obj.color])
    where = position_of(config, obj)
    truth = t.r_color_at(where, obj.color)
    return _pair("color", t.q_color_at(where, obj.color), t.q_color_at(where, wrong), (truth, truth), "fallback")


def _groups(scene: Scene, config: WorldConfig) -> list[tuple[str, str, int]]:
    """(kind, value, count) for every shape and colour of the vocabulary, in config order."""
    shapes, colors = scene.shape_counts(), scene.color_counts()
    return [("shape", shape, shapes[shape]) for shape in config.shapes] + [
        ("color", color, colors[color]) for color in config.color_names
    ]


def mme_numerical_calculation(scene: Scene, config: WorldConfig, rng: random.Random) -> tuple[QA, QA]:
    # Two groups of one kind (shapes or colours); the first is present so the sum is about the scene.
    kinds = [kind for kind, size in (("shape", len(config.shapes)), ("color", len(config.colors))) if size >= 2]
    kind = rng.choice(kinds)
    groups = [(value, count) for group_kind, value, count in _groups(scene, config) if group_kind == kind]
    first = rng.choice([group for group in groups if group[1] > 0])
    second = rng.choice([group for group in groups if group[0] != first[0]])
    true = first[1] + second[1]
    yes_why = t.r_sum(first[1], second[1])
    yes = t.q_sum(t.group_phrase(kind, first[0]), t.group_phrase(kind, second[0]), true)
    # The "No" question states the same total for another pair of groups of the same kind whose sum differs:
    # the total and the kind then carry nothing about the answer (a total moved by a small offset did: true
    # sums are small, so large totals were mostly "No").
    # If every pair of that kind sums to the total (e.g. one object of each shape), the other kind is tried.
    for no_kind in [kind] + [other for other in kinds if other != kind]:
        counts = [(value, count) for group_kind, value, count in _groups(scene, config) if group_kind == no_kind]
        wrong_pairs = [((a, count_a), (b, count_b)) for a, count_a in counts for b, count_b in counts
                       if a != b and count_a + count_b != true]
        if wrong_pairs:
            (name_a, count_a), (name_b, count_b) = rng.choice(wrong_pairs)
            no = t.q_sum(t.group_phrase(no_kind, name_a), t.group_phrase(no_kind, name_b), true)
            return _pair("numerical_calculation", yes, no, (yes_why, t.r_sum(count_a, count_b)),
                         "main" if no_kind == kind else "fallback")
    wrong = rng.choice([true + offset for offset in SUM_OFFSETS if true + offset >= 0])
    name_a, name_b = t.group_phrase(kind, first[0]), t.group_phrase(kind, second[0])
    return _pair("numerical_calculation", yes, t.q_sum(name_a, name_b, wrong), (yes_why, yes_why), "fallback")


def mme_comparison(scene: Scene, config: WorldConfig, rng: random.Random) -> tuple[QA, QA]:
    groups = _groups(scene, config)
    unequal = [
        (kind, big, big_count, small, small_count)
        for kind, big, big_count in groups
        for other_kind, small, small_count in groups
        if kind == other_kind and big_count > small_count
    ]
    if unequal:
        kind, big, big_count, small, small_count = rng.choice(unequal)
        more, fewer = t.group_phrase(kind, big), t.group_phrase(kind, small)
        return _pair("comparison", t.q_more(more, fewer), t.q_more(fewer, more),
                     (t.r_versus(big_count, small_count), t.r_versus(small_count, big_count)))
    total = len(scene.objects)  # every scene has >= 1 object, so "more than total-1" is true
    return _pair("comparison", t.q_more_than_total(total - 1), t.q_more_than_total(total),
                 (t.r_total(total), t.r_total(total)), "fallback")


MME_BUILDERS: dict[str, Callable[[Scene, WorldConfig, random.Random], tuple[QA, QA]]] = {
    "existence": mme_existence,
    "count": mme_count,
    "position": mme_position,
    "color": mme_color,
    "numerical_calculation": mme_numerical_calculation,
    "comparison": mme_comparison,
}


# ---- open questions and hallucination probes ------------------------------------------------------------------
def open_count(scene: Scene, config: WorldConfig, rng: random.Random) -> QA:
    shape = rng.choice(config.shapes)  # absent shapes too: "0" is an answer worth learning
    return QA("open", "count", t.q_how_many(shape), t.a_count(scene.shape_counts()[shape]))


def open_or_probe_color(scene: Scene, config: WorldConfig, rng: random.Random, probe_rate: float) -> QA | None:
    """'What color is the <shape>?' about a unique shape, or (a probe) about an absent one."""
    counts = scene.shape_counts()
    unique = [shape for shape in config.shapes if counts[shape] == 1]
    absent = [shape for shape in config.shapes if counts[shape] == 0]
    probe = rng.random() < probe_rate
    if (probe and absent) or (absent and not unique):
        shape = rng.choice(absent)
        return QA("probe", "color", t.q_what_color(shape), t.a_absent(shape))
    if not unique:
        return None  # every shape present more than once: nothing to ask without ambiguity
    shape = rng.choice(unique)
    color = next(obj.color for obj in scene.objects if obj.shape == shape)
    return QA("open", "color", t.q_what_color(shape), t.a_color(color))


def open_or_probe_position(scene: Scene, config: WorldConfig, rng: random.Random, probe_rate: float) -> QA | None:
    """'Where is the <colour> <shape>?' about a unique object, or (a probe) about an absent kind."""
    kinds = scene.kind_counts()
    unique = [obj for obj in scene.objects if kinds[(obj.color, obj.shape)] == 1]
    absent = [(color, shape) for color in config.color_names for shape in config.shapes if not kinds[(color, shape)]]
    probe = rng.random() < probe_rate
    if (probe and absent) or (absent and not unique):
        color, shape = rng.choice(absent)
        return QA("probe", "position", t.q_where(color, shape), t.a_absent(f"{color} {shape}"))
    if not unique:
        return None
    obj = rng.choice(unique)
    return QA("open", "position", t.q_where(obj.color, obj.shape), t.a_where(position_of(config, obj)))


def describe(scene: Scene, config: WorldConfig) -> str:
    """Canonical description: objects in reading order (row, then column)."""
    ordered = sorted(scene.objects, key=lambda obj: (obj.row, obj.col))
    phrases = [
        t.object_phrase(obj.size, obj.color, obj.shape, position_of(config, obj), first=index == 0)
        for index, obj in enumerate(ordered)
    ]
    return t.a_describe(phrases)


def open_describe(scene: Scene, config: WorldConfig) -> QA:
    return QA("open", "describe", t.Q_DESCRIBE, describe(scene, config))


def scene_questions(scene: Scene, config: WorldConfig, seed: int) -> tuple[list[QA], list[QA], list[str]]:
    """All questions of one scene: (MME pairs in category order, open/probe questions, skipped slots).

    The rng is seeded from (seed, scene_id), so a scene's questions do not depend on any other scene.
    """
    rng = random.Random(f"silkfire-world/{seed}/{scene.scene_id}/questions")
    mme: list[QA] = []
    for category in MME_CATEGORIES:
        mme.extend(MME_BUILDERS[category](scene, config, rng))
    open_questions: list[QA] = [open_count(scene, config, rng)]
    skipped: list[str] = []
    for slot, builder in (("color", open_or_probe_color), ("position", open_or_probe_position)):
        qa = builder(scene, config, rng, config.probe_rate)
        if qa is None:
            skipped.append(slot)
        else:
            open_questions.append(qa)
    open_questions.append(open_describe(scene, config))
    return mme, open_questions, skipped
