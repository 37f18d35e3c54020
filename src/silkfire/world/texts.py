"""The language of the world: every question and answer text a world with this config can produce."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from silkfire.world import templates as t
from silkfire.world.config import WorldConfig
from silkfire.world.questions import SUM_OFFSETS


def world_texts(config: WorldConfig) -> Iterator[str]:
    """Yield every question and answer template filled over the vocabulary (for training the tokenizer).

    Descriptions are open-ended (any set of objects), so they are covered by every single-object description
    and one two- and three-object description per object phrase, which holds every word and joiner they use.
    Texts are yielded in a deterministic order, without duplicates.
    """
    seen: set[str] = set()
    for text in _all_texts(config):
        if text not in seen:
            seen.add(text)
            yield text


def _all_texts(config: WorldConfig) -> Iterator[str]:
    shapes, colors = config.shapes, config.color_names
    positions = [t.position_phrase(row, col) for row in config.row_names for col in config.col_names]
    max_count = max(config.max_objects, 2)
    groups = [t.group_phrase("shape", shape) for shape in shapes] + [t.group_phrase("color", c) for c in colors]

    yield t.YES
    yield t.NO
    for color, shape in itertools.product(colors, shapes):
        yield t.q_existence(color, shape)
        yield t.q_where(color, shape)
        yield t.a_absent(f"{color} {shape}")
        for position in positions:
            yield t.q_position(color, shape, position)
    for shape in shapes:
        yield t.q_how_many(shape)
        yield t.q_what_color(shape)
        yield t.a_absent(shape)
        for count in range(1, max_count + 1):
            yield t.q_count(shape, count)
        for color in colors:
            yield t.q_color(shape, color)
    for position in positions:
        yield t.q_position_occupied(position)
        yield t.a_where(position)
        for color in colors:
            yield t.q_color_at(position, color)
    for count in range(config.max_objects + 1):
        yield t.a_count(count)
        yield t.q_more_than_total(count)
    for color in colors:
        yield t.a_color(color)
    for group_a, group_b in itertools.permutations(groups, 2):
        yield t.q_more(group_a, group_b)
    max_sum = config.max_objects + max(SUM_OFFSETS)
    for kind, values in (("shape", shapes), ("color", colors)):
        for value_a, value_b in itertools.permutations(values, 2):
            for total in range(max_sum + 1):
                yield t.q_sum(t.group_phrase(kind, value_a), t.group_phrase(kind, value_b), total)
    yield t.Q_DESCRIBE
    yield from _descriptions(config, positions)
    for rationale in _rationales(config, positions):
        yield t.explained(t.YES, rationale)
        yield t.explained(t.NO, rationale)


def _rationales(config: WorldConfig, positions: list[str]) -> Iterator[str]:
    shapes, colors = config.shapes, config.color_names
    counts = range(config.max_objects + 1)
    for color, shape in itertools.product(colors, shapes):
        yield t.r_no_kind(color, shape)
        for position in positions:
            yield t.r_kind_at(color, shape, position)
            yield t.r_occupied(position, color, shape)
    for shape in shapes:
        for count in counts:
            yield t.r_count(shape, count)
        for color in colors:
            yield t.r_color(shape, color)
    for position in positions:
        yield t.r_empty(position)
        for color in colors:
            yield t.r_color_at(position, color)
    for count_a, count_b in itertools.product(counts, counts):
        yield t.r_sum(count_a, count_b)
        yield t.r_versus(count_a, count_b)
    for count in counts:
        yield t.r_total(count)


def _descriptions(config: WorldConfig, positions: list[str]) -> Iterator[str]:
    attributes = list(itertools.product(config.size_names, config.color_names, config.shapes, positions))
    for index, (size, color, shape, position) in enumerate(attributes):
        first = t.object_phrase(size, color, shape, position, first=True)
        yield t.a_describe([first])
        # Partners rotate through the attribute list so every phrase also appears in the middle/last place.
        partners = [attributes[(index + step) % len(attributes)] for step in (1, 2)]
        rest = [t.object_phrase(*partner, first=False) for partner in partners]
        if config.max_objects >= 2:
            yield t.a_describe([first, rest[0]])
        if config.max_objects >= 3:
            yield t.a_describe([first, *rest])
