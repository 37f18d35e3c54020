"""What a response claims about a shapes-world scene, and what a world question asks: the oracles' reading.

The oracle judge (VLFeedback aspects) and the MMHal oracle rater share this reading, so both check a response
against the scene graph in the same way.

*Claims* (:class:`Claim`) are read from every declarative sentence of a response (sentences ending in "?" are
skipped: echoing a question claims nothing):

- an object phrase with an article/"another" -- ``a large red circle in the top left`` -- claims that such an
  object exists (every attribute given must match one object: size, colour, shape, cell);
- a number before a phrase -- ``2 circles``, ``three red objects``, ``4 objects`` -- claims that exact count;
- ``no``/``zero`` before a phrase -- ``There is no green square`` -- claims that no such object exists.
  Plural phrases without a determiner (``circles``) claim nothing; ``any`` claims nothing.

*Questions* (:func:`read_question`) are recognised from the world's templates (src/silkfire/world/templates.py),
with or without MME's " Please answer yes or no." suffix, plus the MMHal-style forms of
:mod:`silkfire.eval.mmhal`. The *answer* of a response is read from its first sentence (verbose responses put
it first), falling back to the whole text; it becomes claims too (a "Yes" to "Is there a green square?" claims
a green square), so a wrong answer is also a false claim.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from silkfire.world.config import WorldConfig
from silkfire.world import templates as t
from silkfire.world.scene import Scene, WorldObject

NUMBER_WORDS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
                "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}
ABSENT_WORDS = ("none", "nothing", "no object", "no objects", "not in the image", "there is no", "there are no",
                "there isn't", "there aren't", "is not present", "are not present", "empty")


@dataclass(frozen=True)
class Group:
    """A set of objects by attributes (None = any)."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None
    row: int | None = None
    col: int | None = None

    def matches(self, obj: WorldObject) -> bool:
        return all(want is None or want == have for want, have in (
            (self.shape, obj.shape), (self.color, obj.color), (self.size, obj.size), (self.row, obj.row),
            (self.col, obj.col)))

    def count(self, scene: Scene) -> int:
        return sum(self.matches(obj) for obj in scene.objects)

    def text(self, config: WorldConfig, plural: bool = False) -> str:
        words = [word for word in (self.size, self.color) if word]
        noun = self.shape or "object"
        words.append(f"{noun}s" if plural else noun)
        if self.row is not None and self.col is not None:
            words.append(f"in the {config.row_names[self.row]} {config.col_names[self.col]}")
        elif self.row is not None:
            words.append(f"in the {config.row_names[self.row]} row")
        elif self.col is not None:
            words.append(f"in the {config.col_names[self.col]} column")
        return " ".join(words)


@dataclass(frozen=True)
class Claim:
    """One checkable statement. kinds: exists, absent, count (== n), sum (group + other == n),
    more (group > other, or > n when other is None), relation (signs of row/col offset of group to other),
    background (the background colour is ``value``). ``negated`` flips it (a "No" answer)."""

    kind: str
    group: Group = field(default_factory=Group)
    other: Group | None = None
    n: int | None = None
    value: str | None = None
    dr: int | None = None
    dc: int | None = None
    negated: bool = False

    def holds(self, scene: Scene, config: WorldConfig) -> bool:
        return self._base(scene, config) != self.negated

    def _base(self, scene: Scene, config: WorldConfig) -> bool:
        count = self.group.count(scene)
        if self.kind == "exists":
            return count > 0
        if self.kind == "absent":
            return count == 0
        if self.kind == "count":
            return count == self.n
        if self.kind == "sum":
            assert self.other is not None
            return count + self.other.count(scene) == self.n
        if self.kind == "more":
            return count > (self.other.count(scene) if self.other is not None else int(self.n or 0))
        if self.kind == "relation":
            assert self.other is not None
            first = [obj for obj in scene.objects if self.group.matches(obj)]
            second = [obj for obj in scene.objects if self.other.matches(obj)]
            if len(first) != 1 or len(second) != 1:
                return False
            a, b = first[0], second[0]
            sign = lambda x: (x > 0) - (x < 0)  # noqa: E731
            return ((self.dr is None or sign(a.row - b.row) == self.dr)
                    and (self.dc is None or sign(a.col - b.col) == self.dc))
        if self.kind == "background":
            return self.value == background_name(config)
        raise ValueError(f"unknown claim kind {self.kind!r}")

    def text(self, config: WorldConfig) -> str:
        """The claim in words, for rationales."""
        g = self.group
        if self.kind == "exists":
            body = f"there is a {g.text(config)}"
        elif self.kind == "absent":
            body = f"there is no {g.text(config)}"
        elif self.kind == "count":
            body = f"there {'is' if self.n == 1 else 'are'} {self.n} {g.text(config, plural=self.n != 1)}"
        elif self.kind == "sum":
            assert self.other is not None
            body = f"{g.text(config, True)} plus {self.other.text(config, True)} number {self.n}"
        elif self.kind == "more":
            than = self.other.text(config, True) if self.other is not None else str(self.n)
            body = f"there are more {g.text(config, True)} than {than}"
        elif self.kind == "relation":
            assert self.other is not None
            where = [{-1: "above", 0: "in the same row as", 1: "below"}[self.dr] if self.dr is not None else "",
                     {-1: "left of", 0: "in the same column as", 1: "right of"}[self.dc] if self.dc is not None
                     else ""]
            body = f"the {g.text(config)} is {' and '.join(w for w in where if w)} the {self.other.text(config)}"
        else:
            body = f"the background is {self.value}"
        return f"it is not true that {body}" if self.negated else body

    def truth(self, scene: Scene, config: WorldConfig) -> str:
        """What the scene says instead (for the rationale of a false claim)."""
        g = self.group
        count = g.count(scene)
        if self.kind in ("exists", "absent", "count"):
            if self.kind == "exists" and not self.negated and g.row is not None and g.col is not None:
                at = [obj for obj in scene.objects if (obj.row, obj.col) == (g.row, g.col)]
                return f"that cell holds a {object_text(at[0], config, where=False)}" if at else "that cell is empty"
            if count == 0:
                return f"there is no {g.text(config)}"
            return f"the image has {count} {g.text(config, plural=count != 1)}"
        if self.kind in ("sum", "more"):
            other = self.other.count(scene) if self.other is not None else None
            return f"the image has {count} {g.text(config, count != 1)}" + (
                f" and {other} {self.other.text(config, other != 1)}" if self.other is not None else "")
        if self.kind == "background":
            return f"the background is {background_name(config)}"
        return "the image does not show that"


def object_text(obj: WorldObject, config: WorldConfig, where: bool = True) -> str:
    text = f"{obj.size} {obj.color} {obj.shape}"
    return f"{text} in the {config.row_names[obj.row]} {config.col_names[obj.col]}" if where else text


def background_name(config: WorldConfig) -> str:
    return t.background_name(config.background)


# ---- reading text ----------------------------------------------------------------------------------------------
def _alt(words: Sequence[str]) -> str:
    return "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))


def _number(word: str) -> int | None:
    word = word.lower()
    if word.isdigit():
        return int(word)
    return NUMBER_WORDS.get(word)


def sentences(text: str) -> list[str]:
    """Split on sentence ends and line breaks; keeps the end mark (so questions can be told apart)."""
    parts = re.findall(r"[^.!?\n]+[.!?]?", text)
    return [part.strip() for part in parts if part.strip()]


class WorldReader:
    """Compiled patterns for one world vocabulary (shapes, colours, sizes, row/column names)."""

    def __init__(self, config: WorldConfig) -> None:
        self.config = config
        shapes, colors, sizes = _alt(config.shapes), _alt(config.color_names), _alt(config.size_names)
        rows, cols = _alt(config.row_names), _alt(config.col_names)
        numbers = _alt(list(NUMBER_WORDS)) + r"|\d+"
        self.position = re.compile(rf"\b(?P<row>{rows})[ -](?P<col>{cols})\b", re.I)
        noun = (rf"(?:(?P<size>{sizes})\s+)?(?:(?P<color>{colors})\s+)?"
                rf"(?:(?P<shape>{shapes})(?P<plural>e?s)?|(?P<objects>objects?|shapes?)\b)")
        self.phrase = re.compile(
            rf"\b(?:(?P<det>{numbers}|no|an?|the|another|any|only)\s+)?{noun}"
            rf"(?:\s+(?:is\s+|are\s+|located\s+)?(?:in|at)\s+the\s+(?P<row>{rows})[ -](?P<col>{cols}))?", re.I)
        self.color = re.compile(rf"\b(?P<color>{colors})\b", re.I)
        self.size = re.compile(rf"\b(?P<size>{sizes})\b", re.I)
        self.shape = re.compile(rf"\b(?P<shape>{shapes})(?:e?s)?\b", re.I)
        self.number = re.compile(rf"\b(?P<n>{numbers})\b", re.I)
        self.yes_no_word = re.compile(r"\b(yes|no)\b", re.I)

    # ---- groups and claims ----------------------------------------------------------------------------------
    def group(self, shape: str | None = None, color: str | None = None, size: str | None = None,
              row: str | None = None, col: str | None = None) -> Group:
        c = self.config
        return Group(shape=shape.lower() if shape else None, color=color.lower() if color else None,
                     size=size.lower() if size else None,
                     row=c.row_names.index(row.lower()) if row else None,
                     col=c.col_names.index(col.lower()) if col else None)

    def group_phrase(self, text: str) -> Group | None:
        """A countable group of a question: 'circles', 'red objects', 'large blue squares'."""
        match = re.fullmatch(rf"\s*{self.phrase.pattern}\s*", text, re.I)
        if not match or match.group("det"):
            return None
        return self.group(match.group("shape"), match.group("color"), match.group("size"), match.group("row"),
                          match.group("col"))

    def claims(self, text: str) -> list[Claim]:
        """Claims of every declarative sentence (see the module docstring), without duplicates, in order."""
        found: list[Claim] = []
        for sentence in sentences(text):
            if sentence.endswith("?"):
                continue
            for match in self.phrase.finditer(sentence):
                claim = self._claim(match)
                if claim is not None and claim not in found:
                    found.append(claim)
        return found

    def _claim(self, match: re.Match[str]) -> Claim | None:
        det = (match.group("det") or "").lower()
        group = self.group(match.group("shape"), match.group("color"), match.group("size"), match.group("row"),
                           match.group("col"))
        plural = bool(match.group("plural")) or (match.group("objects") or "").lower() in ("objects", "shapes")
        number = _number(det) if det else None
        if det in ("no",) or number == 0:
            return Claim("absent", group)
        if number is not None:
            return Claim("count", group, n=number)
        if det in ("a", "an", "another", "the") and not plural:
            if group == Group():
                return None  # "an object" / "the shape": nothing specific
            return Claim("exists", group)
        return None

    # ---- answers ----------------------------------------------------------------------------------------------
    def says_absent(self, text: str) -> bool:
        lowered = f" {text.lower()} "
        return any(re.search(rf"(?<![a-z]){re.escape(word)}(?![a-z])", lowered) for word in ABSENT_WORDS)

    def yes_no(self, text: str) -> str | None:
        """'yes'/'no' at the start of the response, else the only one of the two anywhere; None otherwise."""
        head = re.match(r"\W*(yes|no)\b", text, re.I)
        if head:
            return head.group(1).lower()
        found = {word.lower() for word in self.yes_no_word.findall(text)}
        return found.pop() if len(found) == 1 else None

    def first_number(self, text: str) -> int | None:
        match = self.number.search(text)
        return _number(match.group("n")) if match else None


def answer_text(text: str) -> str:
    """The answer part of a response: its first declarative sentence (the whole text if there is none)."""
    for sentence in sentences(text):
        if not sentence.endswith("?"):
            return sentence
    return text


# ---- questions -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Question:
    """A recognised world question. ``kind``: yesno | count | color | size | where | describe | what_at |
    relation | background | shapes. ``claim`` (yesno: the proposition a "Yes" claims), ``subject`` (the object
    asked about), ``other`` (relation: the reference object), ``cell`` (what_at)."""

    kind: str
    claim: Claim | None = None
    subject: Group | None = None
    other: Group | None = None


@dataclass(frozen=True)
class Answer:
    """How a response answers a question: ``answered`` False when no answer could be read; ``claims`` what
    the answer asserts; ``correct`` whether it is right (and, for descriptions, complete)."""

    answered: bool
    claims: tuple[Claim, ...]
    correct: bool
    expected: str
    note: str = ""


YES_NO_SUFFIX = re.compile(r"\s*please answer yes or no\.?\s*$", re.I)


class QuestionReader(WorldReader):
    """World questions -> :class:`Question`; (question, response, scene) -> :class:`Answer`."""

    def __init__(self, config: WorldConfig) -> None:
        super().__init__(config)
        obj = r"(?P<{}>[a-z ]+?)"
        pos = rf"(?P<row>{_alt(config.row_names)}) (?P<col>{_alt(config.col_names)})"
        self.patterns: list[tuple[str, re.Pattern[str]]] = [
            ("exists", re.compile(rf"is there an? {obj.format('a')} in the image\?", re.I)),
            ("count_yn", re.compile(rf"(?:is|are) there exactly (?P<n>\d+) {obj.format('a')} in the image\?", re.I)),
            ("position", re.compile(rf"is the {obj.format('a')} in the {pos} of the image\?", re.I)),
            ("occupied", re.compile(rf"is there an object in the {pos} of the image\?", re.I)),
            ("color_at", re.compile(rf"is the object in the {pos} of the image (?P<color>[a-z]+)\?", re.I)),
            ("color_yn", re.compile(rf"is the {obj.format('a')} in the image (?P<color>[a-z]+)\?", re.I)),
            ("sum", re.compile(rf"is the number of {obj.format('a')} plus the number of {obj.format('b')} "
                               rf"equal to (?P<n>\d+)\?", re.I)),
            ("more_total", re.compile(r"are there more than (?P<n>\d+) objects? in the image\?", re.I)),
            ("more", re.compile(rf"are there more {obj.format('a')} than {obj.format('b')}\?", re.I)),
            ("how_many", re.compile(rf"how many {obj.format('a')} are there(?: in the image)?(?: in total)?\?", re.I)),
            ("what_color", re.compile(rf"what colou?r is the {obj.format('a')}\?", re.I)),
            ("what_size", re.compile(rf"what size is the {obj.format('a')}\?", re.I)),
            ("relation", re.compile(rf"where is the {obj.format('a')} relative to the {obj.format('b')}\?", re.I)),
            ("where", re.compile(rf"where is the {obj.format('a')}\?", re.I)),
            ("what_at", re.compile(rf"what is in the {pos} of the image\?", re.I)),
            ("background", re.compile(r"what colou?r is the background(?: of the image)?\?", re.I)),
            ("shapes", re.compile(r"what (?:kinds of )?shapes (?:are|appear) in the image\?", re.I)),
            ("describe", re.compile(r"describe (?:the|this) image(?: in detail)?\.?", re.I)),
        ]

    def read_question(self, prompt: str) -> Question | None:
        """The question a prompt asks, or None when it is not a world question."""
        text = YES_NO_SUFFIX.sub("", " ".join(prompt.replace("<image>", " ").split()))
        for name, pattern in self.patterns:
            match = pattern.fullmatch(text)
            if match is None:
                continue
            question = self._question(name, match)
            if question is not None:
                return question
        return None

    def _g(self, text: str | None) -> Group | None:
        return self.group_phrase(text) if text else None

    def _question(self, name: str, m: re.Match[str]) -> Question | None:
        a, b = self._g(m.groupdict().get("a")), self._g(m.groupdict().get("b"))
        cell = self.group(row=m.group("row"), col=m.group("col")) if "row" in m.groupdict() else None
        yes = lambda claim: Question("yesno", claim=claim)  # noqa: E731
        if name in ("exists", "count_yn", "position", "color_yn", "what_color", "what_size", "where",
                    "how_many") and a is None:
            return None
        if name == "exists":
            return yes(Claim("exists", a))
        if name == "count_yn":
            return yes(Claim("count", a, n=int(m.group("n"))))
        if name == "position":
            return yes(Claim("exists", replace(a, row=cell.row, col=cell.col)))
        if name == "occupied":
            return yes(Claim("exists", cell))
        if name == "color_at":
            return yes(Claim("exists", replace(cell, color=m.group("color").lower())))
        if name == "color_yn":
            return yes(Claim("exists", replace(a, color=m.group("color").lower())))
        if name == "sum" and a is not None and b is not None:
            return yes(Claim("sum", a, b, n=int(m.group("n"))))
        if name == "more_total":
            return yes(Claim("more", Group(), n=int(m.group("n"))))
        if name == "more" and a is not None and b is not None:
            return yes(Claim("more", a, b))
        if name == "how_many":
            return Question("count", subject=a)
        if name == "what_color":
            return Question("color", subject=a)
        if name == "what_size":
            return Question("size", subject=a)
        if name == "where":
            return Question("where", subject=a)
        if name == "relation" and a is not None and b is not None:
            return Question("relation", subject=a, other=b)
        if name == "what_at":
            return Question("what_at", subject=cell)
        if name in ("background", "shapes", "describe"):
            return Question(name)
        return None

    # ---- answers ----------------------------------------------------------------------------------------------
    def answer(self, question: Question, response: str, scene: Scene) -> Answer:
        """Read the response's answer to ``question`` and check it against the scene."""
        config = self.config
        head = answer_text(response)
        if question.kind == "yesno":
            assert question.claim is not None
            truth = "yes" if question.claim.holds(scene, config) else "no"
            said = self.yes_no(head) or self.yes_no(response)
            if said is None:
                return Answer(False, (), False, truth)
            claim = question.claim if said == "yes" else replace(question.claim, negated=True)
            return Answer(True, (claim,), said == truth, truth)
        subject = question.subject or Group()
        present = subject.count(scene)
        if question.kind == "count":
            number = self.first_number(head)
            if number is None and self.says_absent(head):
                number = 0
            if number is None:
                return Answer(False, (), False, str(present))
            return Answer(True, (Claim("count", subject, n=number),), number == present, str(present))
        if question.kind in ("color", "size", "where"):
            return self._attribute(question.kind, subject, head, scene)
        if question.kind == "relation":
            return self._relation(subject, question.other or Group(), head, scene)
        if question.kind == "what_at":
            return self._what_at(subject, response, scene)
        if question.kind == "background":
            match = self.color.search(head) or re.search(r"\b(white|black|gr[ae]y)\b", head, re.I)
            expected = background_name(config)
            if match is None:
                return Answer(False, (), False, expected)
            value = match.group(0).lower().replace("grey", "gray")
            return Answer(True, (Claim("background", value=value),), value == expected, expected)
        if question.kind == "shapes":
            mentioned = {m.group("shape").lower() for m in self.shape.finditer(response)}
            truth = {obj.shape for obj in scene.objects}
            claims = tuple(Claim("exists", Group(shape=shape)) for shape in sorted(mentioned))
            return Answer(bool(mentioned), claims, mentioned == truth, ", ".join(sorted(truth)))
        if question.kind == "describe":
            claims = tuple(claim for claim in self.claims(response) if claim.kind == "exists")
            missing = [obj for obj in scene.objects if not any(
                claim.group.matches(obj) and claim.group.shape and claim.group.color for claim in claims)]
            expected = "; ".join(object_text(obj, config) for obj in scene.objects)
            return Answer(bool(claims), claims, not missing and all(c.holds(scene, config) for c in claims),
                          expected, note=f"{len(missing)} missing")
        raise ValueError(f"unknown question kind {question.kind!r}")

    def _attribute(self, kind: str, subject: Group, head: str, scene: Scene) -> Answer:
        config = self.config
        objects = [obj for obj in scene.objects if subject.matches(obj)]
        if kind == "color":
            expected = " or ".join(sorted({obj.color for obj in objects}))
        elif kind == "size":
            expected = " or ".join(sorted({obj.size for obj in objects}))
        else:
            expected = " or ".join(f"{config.row_names[o.row]} {config.col_names[o.col]}" for o in objects)
        expected = expected or "absent"
        pattern = {"color": self.color, "size": self.size, "where": self.position}[kind]
        match = pattern.search(head)
        if match is not None and not (kind != "where" and self.says_absent(head) and _absent_first(head, match)):
            if kind == "color":
                group = replace(subject, color=match.group("color").lower())
            elif kind == "size":
                group = replace(subject, size=match.group("size").lower())
            else:
                cell = self.group(row=match.group("row"), col=match.group("col"))
                group = replace(subject, row=cell.row, col=cell.col)
            claim = Claim("exists", group)
            return Answer(True, (claim,), bool(objects) and claim.holds(scene, config), expected)
        if self.says_absent(head):
            claim = Claim("absent", subject)
            return Answer(True, (claim,), not objects, expected)
        return Answer(False, (), False, expected)

    def _relation(self, subject: Group, other: Group, head: str, scene: Scene) -> Answer:
        lowered = head.lower()
        dr = -1 if "above" in lowered else 1 if "below" in lowered else 0 if "same row" in lowered else None
        # "left of"/"right of" only: "top left" names a cell, not a relation
        dc = (-1 if re.search(r"\bleft of\b", lowered) else 1 if re.search(r"\bright of\b", lowered)
              else 0 if "same column" in lowered else None)
        first = [obj for obj in scene.objects if subject.matches(obj)]
        second = [obj for obj in scene.objects if other.matches(obj)]
        expected = "unknown"
        if len(first) == 1 and len(second) == 1:
            sign = lambda x: (x > 0) - (x < 0)  # noqa: E731
            expected = f"dr={sign(first[0].row - second[0].row)} dc={sign(first[0].col - second[0].col)}"
        if dr is None and dc is None:
            return Answer(False, (), False, expected)
        claim = Claim("relation", subject, other, dr=dr, dc=dc)
        complete = dr is not None and dc is not None
        return Answer(True, (claim,), complete and claim.holds(scene, self.config), expected)

    def _what_at(self, cell: Group, response: str, scene: Scene) -> Answer:
        config = self.config
        at = [obj for obj in scene.objects if cell.matches(obj)]
        expected = object_text(at[0], config) if at else "nothing"
        head = answer_text(response)
        claims = [claim for claim in self.claims(head) if claim.kind == "exists"]
        if claims:
            placed = tuple(Claim("exists", replace(claim.group, row=cell.row, col=cell.col))
                           if claim.group.row is None else claim for claim in claims)
            correct = bool(at) and any(claim.group.shape == at[0].shape for claim in placed) and all(
                claim.holds(scene, config) for claim in placed)
            return Answer(True, placed, correct, expected)
        if self.says_absent(head):
            return Answer(True, (Claim("absent", cell),), not at, expected)
        return Answer(False, (), False, expected)


def _absent_first(text: str, match: re.Match[str]) -> bool:
    """True when an absence phrase comes before the attribute word ('There is no red ...')."""
    lowered = text.lower()
    starts = [lowered.find(word) for word in ABSENT_WORDS if word in lowered]
    return bool(starts) and min(starts) < match.start()
