"""The oracle FIRE teacher of the shapes world: scores from the scene graph, feedback that does not give the answer.

The question kind comes from ``TeacherInput.family``/``category`` or, when absent, from the question text (the
world's templates, silkfire.world.templates). The student's answer is the text after its last "Answer:".
Scores (1-10; a wrong answer always scores <= 7, so below FIRE's stopping threshold 8; a right one 10):

=================  ==========================================================================================
question           score
=================  ==========================================================================================
yes/no (MME)       10 right; 2 wrong; 1 no yes/no in the answer
count              10 right; 5 off by one; 3 off by two; 2 further off; 1 no number
colour             10 right; 2 another colour, or several colours named (a hedge, e.g. a whole scene
                   description); 1 no colour named, or the shape called absent
position           10 row and column right; 5 one of them right; 2 neither, or several rows or columns named
                   (a hedge); 1 no row/column named, or the object called absent
probe (absent)     10 the answer says it is not there ("There is no ...", "no", "none", "not"); 1 otherwise
describe           10 exactly the scene's objects (size, colour, shape, cell); else 1 + round(6 * F1) where F1
                   is over exactly right objects (so <= 7); 1 when no object phrase can be read
other (real data)  10 the normalised ground truth equals the answer or occurs in it as a whole word/number;
                   numbers: 10 equal, else <= 5 by relative error; otherwise 1 + round(6 * token F1) (<= 7)
=================  ==========================================================================================

Feedback says what is wrong and where to look ("You counted too few circles; look at the bottom row again",
"Blue is not the colour of the circle; it is in the top left of the image, look at it again") and never states
the ground truth the student has not said: it passes the data-quality gate's leak rule (silkfire.quality.fire.leaks),
which tests check over every question kind and failure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from silkfire.fire.text import TeacherInput, format_teacher, student_answer
from silkfire.world import templates as t
from silkfire.world.config import WorldConfig
from silkfire.world.scene import Scene, WorldObject, scene_from_record

NUMBER_WORDS = {"zero": 0, "no": 0, "none": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
                "seven": 7, "eight": 8, "nine": 9, "ten": 10}
_DENIAL = re.compile(r"\b(there is no|there are no|there's no|no|none|not|nothing|absent|isn't|is not)\b")
_WORD = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")
CORRECT = "Correct. Your answer matches the image."


# Words that carry no content in a free-text comparison ("a dog" vs "a cat" share nothing).
_STOPWORDS = frozenset({"a", "an", "the", "is", "are", "of", "in", "on", "it", "its", "this", "that", "there", "and"})


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


class OracleTeacher:
    """Scores world answers against the scene graph (module docstring); deterministic, no model."""

    def __init__(self, world: WorldConfig | Mapping[str, Any] | None = None, name: str = "oracle"):
        if world is None:
            world = WorldConfig()
        elif not isinstance(world, WorldConfig):
            world = WorldConfig.from_mapping(world)
        self.world = world
        self.name = name
        self.shapes = tuple(world.shapes)
        self.colors = tuple(world.color_names)
        self.sizes = tuple(world.size_names)
        self.rows, self.cols = tuple(world.row_names), tuple(world.col_names)
        alt = "|".join
        self._object = re.compile(
            rf"\b(?:(?P<size>{alt(self.sizes)}) )?(?P<color>{alt(self.colors)}) (?P<shape>{alt(self.shapes)})s?\b"
            rf"(?: (?:in|at) the (?P<row>{alt(self.rows)}) (?P<col>{alt(self.cols)}))?")
        shape_alt, color_alt = alt(self.shapes), alt(self.colors)
        self._kinds = [  # (kind, pattern) over the plain question text, as the templates write it
            ("count", re.compile(rf"^How many (?P<shape>{shape_alt})s are there\?$")),
            ("color", re.compile(rf"^What color is the (?P<shape>{shape_alt})\?$")),
            ("position", re.compile(rf"^Where is the (?P<color>{color_alt}) (?P<shape>{shape_alt})\?$")),
            ("describe", re.compile(rf"^{re.escape(t.Q_DESCRIBE)}$")),
        ]

    def describe(self) -> dict[str, Any]:
        return {"kind": "oracle"}

    # ---- the protocol --------------------------------------------------------------------------------------
    def judge(self, items: Sequence[TeacherInput], image_root: Path | None = None) -> list[str | None]:
        return [self.turn(item) for item in items]

    def turn(self, item: TeacherInput) -> str:
        score, feedback = self.score(item)
        return format_teacher(score, feedback)

    def score(self, item: TeacherInput) -> tuple[int, str]:
        """(score, feedback) of one student turn."""
        question = item.question.replace("<image>", "").strip()
        answer = student_answer(item.response)
        scene = self._scene(item.scene)
        truth = item.groundtruth.strip()
        if question.endswith(t.MME_SUFFIX.strip()) or item.family == "mme":
            return self._yes_no(question, answer, truth)
        if scene is not None:
            for kind, pattern in self._kinds:
                match = pattern.match(question)
                if match is None:
                    continue
                if truth.startswith("There is no"):
                    return self._probe(answer, truth)
                handler = getattr(self, f"_{kind}")
                return handler(match.groupdict(), answer, truth, scene)
        return self._generic(answer, truth)

    @staticmethod
    def _scene(scene: Any) -> Scene | None:
        if scene is None or isinstance(scene, Scene):
            return scene
        return scene_from_record(scene)

    def _where(self, obj: WorldObject) -> str:
        return t.position_phrase(self.rows[obj.row], self.cols[obj.col])

    # ---- question kinds ------------------------------------------------------------------------------------
    def _yes_no(self, question: str, answer: str, truth: str) -> tuple[int, str]:
        words = _words(answer)
        said = next((word for word in words if word in ("yes", "no")), None)
        if said is None:
            return 1, "Your answer does not say yes or no. Look at the image and answer the question with yes or no."
        if said == truth.casefold().rstrip("."):
            return 10, CORRECT
        return 2, f"That is not right. {self._yes_no_hint(question)}"

    def _yes_no_hint(self, question: str) -> str:
        body = question.removesuffix(t.MME_SUFFIX.strip()).strip()
        patterns = [
            (r"^Is there an? (\w+) (\w+) in the image\?$",
             "Look at every object again and check both its colour and its shape."),
            (r"^(?:Is|Are) there exactly \d+ (\w+?)s? in the image\?$", "Count the {0}s again, row by row."),
            (r"^Is the (\w+) (\w+) in the .+ of the image\?$",
             "Find the {0} {1} again and check which row and which column it is in."),
            (r"^Is there an object in the .+ of the image\?$", "Look again at the cell the question names."),
            (r"^Is the (\w+) in the image \w+\?$", "Look at the colour of the {0} again."),
            (r"^Is the object in the .+ of the image \w+\?$", "Look at the colour of the object in that cell again."),
            (r"^Is the number of (.+) plus the number of (.+) equal to \d+\?$",
             "Count the {0} and the {1} again, then add the two numbers."),
            (r"^Are there more (.+) than (.+)\?$", "Count the {0} and the {1} again and compare."),
            (r"^Are there more than \d+ objects? in the image\?$", "Count all the objects again, row by row."),
        ]
        for pattern, hint in patterns:
            match = re.match(pattern, body)
            if match:
                return hint.format(*match.groups())
        return "Look at the image again carefully before answering."

    def _count(self, slots: dict[str, str], answer: str, truth: str, scene: Scene) -> tuple[int, str]:
        shape = slots["shape"]
        true = scene.shape_counts()[shape]
        said = next((int(w) if w.isdigit() else NUMBER_WORDS[w] for w in _words(answer)
                     if w.isdigit() or w in NUMBER_WORDS), None)
        plural = t.plural(shape)
        if said is None:
            return 1, f"Your answer does not give a number. Count the {plural} in the image and answer with a number."
        if said == true:
            return 10, CORRECT
        score = {1: 5, 2: 3}.get(abs(said - true), 2)
        if said < true:
            rows = [self.rows[obj.row] for obj in scene.objects if obj.shape == shape]
            hint = f"look at the {rows[-1]} row again" if rows else "look at every row again"
            return score, f"You counted too few {plural}; {hint}."
        if true == 0:
            return score, f"You counted too many {plural}: check the shape of every object again."
        return score, (f"You counted too many {plural}: some of the objects you counted are not {plural}, or you "
                       "counted one twice. Check each object's shape again.")

    def _color(self, slots: dict[str, str], answer: str, truth: str, scene: Scene) -> tuple[int, str]:
        shape = slots["shape"]
        target = next((obj for obj in scene.objects if obj.shape == shape), None)
        named = list(dict.fromkeys(word for word in _words(answer) if word in self.colors))  # in order, once each
        if target is None:  # not a probe by its truth, but the scene has no such shape: compare texts
            return self._generic(answer, truth)
        if not named:
            if _DENIAL.search(answer.casefold()):
                return 1, f"There is a {shape} in the image; look again and name its colour."
            return 1, f"Your answer does not name a colour. Name the colour of the {shape}."
        if len(named) > 1:  # "a red circle and a blue square": naming every colour must not pass as right
            return 2, (f"Your answer names several colours ({', '.join(named)}); say only the colour of the "
                       f"{shape}.")
        said = named[0]
        if said == target.color:
            return 10, CORRECT
        return 2, (f"{said.capitalize()} is not the colour of the {shape}. The {shape} is in the "
                   f"{self._where(target)} of the image; look at it again.")

    def _position(self, slots: dict[str, str], answer: str, truth: str, scene: Scene) -> tuple[int, str]:
        color, shape = slots["color"], slots["shape"]
        target = next((obj for obj in scene.objects if obj.shape == shape and obj.color == color), None)
        if target is None:
            return self._generic(answer, truth)
        words = _words(answer)
        rows_named = list(dict.fromkeys(self.rows.index(w) for w in words if w in self.rows))  # in order, once each
        cols_named = list(dict.fromkeys(self.cols.index(w) for w in words if w in self.cols))
        row = rows_named[0] if rows_named else None
        col = cols_named[0] if cols_named else None
        thing = f"{color} {shape}"
        if row is None and col is None:
            if _DENIAL.search(answer.casefold()):
                return 1, f"The {thing} is in the image; look again and say where it is."
            return 1, (f"Say where the {thing} is: name its row ({', '.join(self.rows)}) and its column "
                       f"({', '.join(self.cols)}).")
        if len(rows_named) > 1 or len(cols_named) > 1:  # a hedge over several cells must not pass as right
            return 2, f"Your answer names several places; say only the one row and column of the {thing}."
        row_ok, col_ok = row == target.row, col == target.col
        if row_ok and col_ok:
            return 10, CORRECT
        vertical = "higher up" if row is not None and target.row < row else "lower down"
        horizontal = "further left" if col is not None and target.col < col else "further right"
        if row_ok:
            if col is None:
                return 5, f"The row is right, but you did not name the column of the {thing}."
            return 5, f"The row is right, but not the column: the {thing} is {horizontal}."
        if col_ok:
            if row is None:
                return 5, f"The column is right, but you did not name the row of the {thing}."
            return 5, f"The column is right, but not the row: the {thing} is {vertical}."
        parts = [vertical if row is not None else "", horizontal if col is not None else ""]
        where = " and ".join(part for part in parts if part)
        return 2, f"Neither the row nor the column is right. Look for the {thing} again: it is {where} than you said."

    def _probe(self, answer: str, truth: str) -> tuple[int, str]:
        if _DENIAL.search(answer.casefold()):
            return 10, CORRECT
        thing = truth.removeprefix("There is no ").removesuffix(" in the image.")
        return 1, (f"You describe a {thing}, but look carefully at every object: is any of them really a {thing}? "
                   "Describe only what the image shows.")

    def _describe(self, slots: dict[str, str], answer: str, truth: str, scene: Scene) -> tuple[int, str]:
        said = [match.groupdict() for match in self._object.finditer(answer.casefold())]
        if not said:
            return 1, ("Describe each object of the image: its size, colour and shape, and the row and column it "
                       "is in.")
        truth_objects = {(obj.row, obj.col): obj for obj in scene.objects}
        exact = 0
        problems: list[str] = []
        seen_cells: set[tuple[int, int]] = set()
        for item in said:
            if item["row"] is None or item["col"] is None:
                problems.append(f"say where the {item['color']} {item['shape']} is (its row and column)")
                continue
            cell = (self.rows.index(item["row"]), self.cols.index(item["col"]))
            where = t.position_phrase(item["row"], item["col"])
            if cell in seen_cells:  # a repeated object must cost something (and leave feedback to give)
                problems.append(f"you described the {where} more than once; describe each object once")
                continue
            seen_cells.add(cell)
            obj = truth_objects.get(cell)
            if obj is None:
                problems.append(f"there is no object in the {where}; describe only what is there")
            elif obj.shape != item["shape"]:
                problems.append(f"the object in the {where} is not a {item['shape']}; look at its shape again")
            elif obj.color != item["color"]:
                problems.append(f"the object in the {where} is not {item['color']}; look at its colour again")
            elif item["size"] is not None and obj.size != item["size"]:
                problems.append(f"check the size of the object in the {where}")
            elif item["size"] is None:
                problems.append(f"give the size of the object in the {where}")
            else:
                exact += 1
        missed = [obj for cell, obj in sorted(truth_objects.items()) if cell not in seen_cells]
        for obj in missed:
            problems.append(f"you missed an object in the {self.rows[obj.row]} row")
        if exact == len(truth_objects) == len(said) and not problems:
            return 10, CORRECT
        precision, recall = exact / len(said), exact / len(truth_objects)
        f1 = 2 * precision * recall / (precision + recall) if exact else 0.0
        score = min(7, 1 + round(6 * f1))
        text = "; ".join(problems[:2])
        return score, text[0].upper() + text[1:] + "."

    def _generic(self, answer: str, truth: str) -> tuple[int, str]:
        said, want = _words(answer), _words(truth)
        if not said:
            return 1, "Your answer is empty. Look at the image and answer the question."
        if said == want or (want and _contains(said, want)):
            return 10, CORRECT
        said_numbers = [float(w) for w in said if _is_number(w)]
        want_numbers = [float(w) for w in want if _is_number(w)]
        if len(want_numbers) == 1 and len(want) == 1 and said_numbers:
            value, target = said_numbers[-1], want_numbers[0]
            if value == target:
                return 10, CORRECT
            error = abs(value - target) / max(abs(target), 1e-9)
            score = 5 if error <= 0.1 else 3 if error <= 0.5 else 2
            direction = "too high" if value > target else "too low"
            return score, f"Your number is {direction}. Look at the image again and redo the reading or the count."
        said_set, want_set = set(said) - _STOPWORDS, set(want) - _STOPWORDS
        common = len(said_set & want_set)
        precision, recall = common / max(len(said_set), 1), common / max(len(want_set), 1)
        f1 = 2 * precision * recall / (precision + recall) if common else 0.0
        score = min(7, 1 + round(6 * f1))
        if common:
            return score, ("Part of your answer is right, but it is not complete or not precise. Look at the image "
                           "again and check each part of your answer.")
        return score, ("Your answer does not match what the image shows. Look at the image again, focusing on what "
                       "the question asks about.")


def _is_number(word: str) -> bool:
    return bool(re.fullmatch(r"\d+(?:\.\d+)?", word))


def _contains(words: list[str], phrase: list[str]) -> bool:
    size = len(phrase)
    return any(words[i:i + size] == phrase for i in range(len(words) - size + 1))
