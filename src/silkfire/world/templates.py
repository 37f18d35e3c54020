"""Text templates of the shapes world: every question and answer string is built here, and only here.

Each template is a small pure function of its slots, so :func:`silkfire.world.texts.world_texts` can enumerate
the whole language of the world for the tokenizer, and checkers can rebuild the expected strings.
"""

from __future__ import annotations

from collections.abc import Sequence

# MME's yes/no suffix (lmms-lab/MME questions end with it).
MME_SUFFIX = " Please answer yes or no."
YES, NO = "Yes", "No"


def plural(shape: str, count: int = 2) -> str:
    """'circle' / 'circles' (all supported shape names take a plain -s)."""
    return shape if count == 1 else f"{shape}s"


def position_phrase(row_name: str, col_name: str) -> str:
    """'top left', 'middle center', ..."""
    return f"{row_name} {col_name}"


def group_phrase(kind: str, value: str) -> str:
    """A countable group: shapes 'circles', colours 'red objects'."""
    return plural(value) if kind == "shape" else f"{value} objects"


def _objects(count: int) -> str:
    return "object" if count == 1 else "objects"


# ---- MME-style yes/no questions (perception) ------------------------------------------------------------------
def q_existence(color: str, shape: str) -> str:
    return f"Is there a {color} {shape} in the image?{MME_SUFFIX}"


def q_count(shape: str, count: int) -> str:
    verb = "Is" if count == 1 else "Are"
    return f"{verb} there exactly {count} {plural(shape, count)} in the image?{MME_SUFFIX}"


def q_position(color: str, shape: str, position: str) -> str:
    return f"Is the {color} {shape} in the {position} of the image?{MME_SUFFIX}"


def q_position_occupied(position: str) -> str:
    """Fallback of ``position`` when no object is unique by colour and shape."""
    return f"Is there an object in the {position} of the image?{MME_SUFFIX}"


def q_color(shape: str, color: str) -> str:
    return f"Is the {shape} in the image {color}?{MME_SUFFIX}"


def q_color_at(position: str, color: str) -> str:
    """Fallback of ``color`` when no shape is unique: the object is named by its cell instead."""
    return f"Is the object in the {position} of the image {color}?{MME_SUFFIX}"


# ---- MME-style yes/no questions (cognition) -------------------------------------------------------------------
def q_sum(group_a: str, group_b: str, value: int) -> str:
    return f"Is the number of {group_a} plus the number of {group_b} equal to {value}?{MME_SUFFIX}"


def q_more(group_a: str, group_b: str) -> str:
    return f"Are there more {group_a} than {group_b}?{MME_SUFFIX}"


def q_more_than_total(count: int) -> str:
    """Fallback of ``comparison`` when no two groups differ in size."""
    return f"Are there more than {count} {_objects(count)} in the image?{MME_SUFFIX}"


# ---- open questions and hallucination probes ------------------------------------------------------------------
def q_how_many(shape: str) -> str:
    return f"How many {plural(shape)} are there?"


def q_what_color(shape: str) -> str:
    return f"What color is the {shape}?"


def q_where(color: str, shape: str) -> str:
    return f"Where is the {color} {shape}?"


Q_DESCRIBE = "Describe the image."


def a_count(count: int) -> str:
    return str(count)


def a_color(color: str) -> str:
    return color


def a_where(position: str) -> str:
    return f"In the {position}."


def a_absent(what: str) -> str:
    """Answer to a probe about something absent: ``what`` is 'triangle' or 'green square'."""
    return f"There is no {what} in the image."


def object_phrase(size: str, color: str, shape: str, position: str, first: bool) -> str:
    article = "A" if first else "a"
    return f"{article} {size} {color} {shape} in the {position}"


def a_describe(phrases: Sequence[str]) -> str:
    """Join object phrases: 'A x.', 'A x and a y.', 'A x, a y and a z.'."""
    if not phrases:
        return "The image is empty."
    if len(phrases) == 1:
        return f"{phrases[0]}."
    return f"{', '.join(phrases[:-1])} and {phrases[-1]}."


# ---- MMHal-style questions and reference answers (eval/mmhal.py; policies/instructions.py on training scenes) --
BACKGROUND_NAMES = {(255, 255, 255): "white", (0, 0, 0): "black", (128, 128, 128): "gray"}
Q_BACKGROUND = "What color is the background of the image?"
Q_SHAPES = "What shapes are in the image?"
A_EMPTY_CELL = "Nothing; that part of the image is empty."
VERTICAL_RELATIONS = ("above", "below", "in the same row as")
HORIZONTAL_RELATIONS = ("to the left of", "to the right of", "in the same column as")


def background_name(rgb: Sequence[int]) -> str:
    return BACKGROUND_NAMES.get(tuple(rgb), "plain")  # type: ignore[arg-type]


def q_what_size(color: str, shape: str) -> str:
    return f"What size is the {color} {shape}?"


def q_what_at(position: str) -> str:
    return f"What is in the {position} of the image?"


def q_relation(subject: str, other: str) -> str:
    return f"Where is the {subject} relative to the {other}?"


def a_is(subject: str, value: str) -> str:
    """'The square is green.', 'The red circle is small.'"""
    return f"The {subject} is {value}."


def a_thing(phrase: str) -> str:
    """'A small green triangle.'"""
    return f"A {phrase}."


def a_relation(subject: str, vertical: str, horizontal: str, other: str) -> str:
    return f"The {subject} is {vertical} and {horizontal} the {other}."


def a_background(name: str) -> str:
    return f"The background is plain {name}."


def a_shapes(plurals: Sequence[str]) -> str:
    listed = plurals[0] if len(plurals) == 1 else ", ".join(plurals[:-1]) + " and " + plurals[-1]
    return f"The image contains {listed}."


def a_there_are(count: int, things: str) -> str:
    """'There is 1 circle.' / 'There are 3 circles.' (``things`` already in the count's number)."""
    return f"There {'is' if count == 1 else 'are'} {count} {things}."


def counted(kind: str, value: str, count: int) -> str:
    """'2 circles', '1 red object'."""
    return f"{count} {plural(value, count)}" if kind == "shape" else f"{count} {value} {_objects(count)}"


def a_compare(verdict: str, count_a: int, things_a: str, things_b: str) -> str:
    """'Yes, there are 2 circles and 1 red object.' (``things_*`` from :func:`counted`)."""
    return f"{verdict}, there {'is' if count_a == 1 else 'are'} {things_a} and {things_b}."


def a_total(verdict: str, total: int) -> str:
    return f"{verdict}, there {'is' if total == 1 else 'are'} {total} {_objects(total)}."


# ---- rationales of yes/no answers -------------------------------------------------------------------------------
# A short statement of the scene's truth behind a Yes or a No, written after it: "Yes, the triangle is red." /
# "No, the triangle is blue.". A yes/no answer is one bit per question; its rationale names what the model had to
# find in the image, which is the signal the tiny model needs to learn to look (see docs/grounding.md). The
# answer still opens the reply, so MME's parser (first 4 characters) reads it unchanged. ANSWER_STYLES: the
# training target styles (train.answer_style): the bare answer, or explained() where the record carries a rationale
# (silkfire.train.data.styled_answers applies them, silkfire.train.sft.SFTConfig checks the name).
ANSWER_STYLES = ("plain", "explained")


def explained(answer: str, rationale: str) -> str:
    """'Yes, the triangle is red.' (the bare answer when there is no rationale)."""
    return f"{answer}, {rationale}." if rationale else answer


def r_kind_at(color: str, shape: str, position: str) -> str:
    return f"the {color} {shape} is in the {position}"


def r_no_kind(color: str, shape: str) -> str:
    return f"there is no {color} {shape} in the image"


def r_count(shape: str, count: int) -> str:
    verb = "is" if count == 1 else "are"
    return f"there {verb} {count} {plural(shape, count)}"


def r_color(shape: str, color: str) -> str:
    return f"the {shape} is {color}"


def r_color_at(position: str, color: str) -> str:
    return f"the object in the {position} is {color}"


def r_occupied(position: str, color: str, shape: str) -> str:
    return f"there is a {color} {shape} in the {position}"


def r_empty(position: str) -> str:
    return f"the {position} is empty"


def r_sum(count_a: int, count_b: int) -> str:
    return f"{count_a} plus {count_b} is {count_a + count_b}"


def r_versus(count_a: int, count_b: int) -> str:
    return f"{count_a} against {count_b}"


def r_total(count: int) -> str:
    verb = "is" if count == 1 else "are"
    return f"there {verb} {count} {_objects(count)}"
