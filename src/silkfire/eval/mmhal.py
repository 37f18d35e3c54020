"""MMHal-Bench on the shapes world: the item set, the oracle rater (0-6), the API rater, and scoring.

**Items** (MMHal-Bench layout, checked by the ``mmhal`` quality gate): ``{"item_id", "question_type", "question_topic",
"image_id", "image_content": [labels], "question", "gt_answer", "image_path"}`` (+ ``model_answer`` once a model
answered, + ``rating``/``rationale`` once rated). :func:`build_mmhal_items` makes one item of each of the 8 types per
held-out scene (test, or val for a validation set), in MMHAL_TYPES order, so the types interleave as in the
benchmark (type of item i = ``MMHAL_TYPES[i % 8]``); ``item_id`` = ``"<scene_id>/<type>"``. Adapted to the
world:

- attribute: "What color is the <shape>?" (a shape present once), else "What size is the <colour> <shape>?";
- adversarial: asks about an absent object: "What color is the triangle?" / "Where is the green square?"
  (answer: "There is no ... in the image.");
- comparison: "Are there more circles than red objects?" (either answer), else "Are there more than N objects ...";
- counting: "How many <shapes> are there?" (a shape present);
- relation: "Where is the <A> relative to the <B>?" (above/below/same row + left of/right of/same column);
- environment: "What color is the background of the image?";
- holistic: "Describe the image.";
- other: "What shapes are in the image?".
When a form cannot be asked about a scene (no object unique enough), "What is in the <cell> of the image?" is
asked instead (same type label; never twice of one scene). Items are seeded per (seed, scene, type), so
adding scenes does not change others.

**Oracle rater** (:class:`OracleMMHalRater`, the MMHal rubric read against the scene graph; claims as in
:mod:`silkfire.vlfeedback.claims`): *hallucination* = any false claim (a wrong answer is one).
No hallucination: 6 = right answer + at least one further true statement + analysis ("because", "since", "so",
"therefore"); 5 = right answer + a further true statement (a complete description counts as very informative);
4 = right (or right but incomplete) answer; 3 = no answer (not informative). With hallucination, informativeness
= (1 if an answer can be read, even a wrong one) + further true statements: 2 when >= 2 (very informative),
1 when 1, 0 when 0. Restating what the question names ("... of the blue square") or what the answer already
says is not a further statement. Rating < 3 = hallucination, as in the benchmark. Two readings of our own:

- "What is in the <cell>?" is answered only by a statement about that cell; a true statement about another cell
  does not answer (3), a false one is a hallucination with no answer;
- arithmetic is not an object count: "1 plus 2 is 4" is a false statement, "0 plus 0 circles" states the count
  0 + 0 of circles (false -> hallucination), and no sum is ever a further (informative) statement.

**API rater** (:class:`ApiMMHalRater`): MMHal's text-only judge setting -- image contents, question, standard
answer and response in one prompt with the 0-6 rubric (:data:`MMHAL_PROMPT`, our wording of the benchmark's
rubric with world examples); replies cached like the VLFeedback judge's; the rating is read by
:func:`parse_mmhal_rating`.

**Scoring** (:func:`score_mmhal`): an item's rating is its integer ``rating`` (0..6) if present, else parsed from
its judge text (``review``, ``judge_output`` or ``gpt4_review``) by the official rule: the rating is s when
exactly one of "rating: 0" .. "rating: 6" occurs in the lowercased text (a substring test, as in
LLaVA-RLHF's ``eval_gpt_mmhal.py``), else 0. score = mean rating; hallucination_rate = share of ratings < 3;
per_type = mean rating per ``MMHAL_TYPES[i % 8]`` (the benchmark's rule, by position).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from silkfire.data.published import read_located
from silkfire.vlfeedback.claims import (
    NUMBER_WORDS,
    Answer,
    Claim,
    Group,
    Question,
    QuestionReader,
    _number,
    answer_text,
    background_name,
    object_text,
)
from silkfire.vlfeedback.oracle_judge import load_world
from silkfire.io import checked_records, write_jsonl
from silkfire.quality.config import MMHAL_TYPES
from silkfire.world import templates as t
from silkfire.world.config import WorldConfig
from silkfire.world.questions import describe
from silkfire.world.scene import Scene

MMHAL_PROMPT_VERSION = "silkfire-mmhal-1"
TEXT_KEYS = ("review", "judge_output", "gpt4_review")
ANALYSIS = re.compile(r"\b(because|since|so|therefore|thus|which means)\b", re.I)


# ---- items -----------------------------------------------------------------------------------------------------
def _position(config: WorldConfig, row: int, col: int) -> str:
    return f"{config.row_names[row]} {config.col_names[col]}"


def _what_at(scene: Scene, config: WorldConfig, rng: random.Random) -> tuple[str, str]:
    occupied = sorted((obj.row, obj.col) for obj in scene.objects)
    empty = [(r, c) for r in range(config.rows) for c in range(config.cols) if (r, c) not in occupied]
    cell = rng.choice(occupied) if rng.random() < 0.5 or not empty else rng.choice(empty)
    obj = scene.at(*cell)
    gt = t.a_thing(object_text(obj, config, where=False)) if obj else t.A_EMPTY_CELL
    return t.q_what_at(_position(config, *cell)), gt


def _attribute(scene: Scene, config: WorldConfig, rng: random.Random) -> tuple[str, str]:
    shapes, kinds = scene.shape_counts(), scene.kind_counts()
    unique_shapes = [obj for obj in scene.objects if shapes[obj.shape] == 1]
    if unique_shapes:
        obj = rng.choice(unique_shapes)
        return t.q_what_color(obj.shape), t.a_is(obj.shape, obj.color)
    unique_kinds = [obj for obj in scene.objects if kinds[(obj.color, obj.shape)] == 1]
    if unique_kinds:
        obj = rng.choice(unique_kinds)
        return t.q_what_size(obj.color, obj.shape), t.a_is(f"{obj.color} {obj.shape}", obj.size)
    return _what_at(scene, config, rng)


def _adversarial(scene: Scene, config: WorldConfig, rng: random.Random) -> tuple[str, str]:
    shapes, kinds = scene.shape_counts(), scene.kind_counts()
    absent_shapes = [shape for shape in config.shapes if not shapes[shape]]
    absent_kinds = [(c, s) for c in config.color_names for s in config.shapes if not kinds[(c, s)]]
    if absent_shapes and rng.random() < 0.5:
        shape = rng.choice(absent_shapes)
        return t.q_what_color(shape), t.a_absent(shape)
    color, shape = rng.choice(absent_kinds)  # the world config guarantees an absent colour+shape
    return t.q_where(color, shape), t.a_absent(f"{color} {shape}")


def _comparison(scene: Scene, config: WorldConfig, rng: random.Random) -> tuple[str, str]:
    shapes, colors = scene.shape_counts(), scene.color_counts()
    groups = [("shape", s, shapes[s]) for s in config.shapes] + [("color", c, colors[c]) for c in config.color_names]
    unequal = [(a, b) for a in groups for b in groups if a[2] != b[2]]
    if unequal:
        (kind_a, value_a, count_a), (kind_b, value_b, count_b) = rng.choice(unequal)
        question = t.q_more(t.group_phrase(kind_a, value_a), t.group_phrase(kind_b, value_b))
        verdict = "Yes" if count_a > count_b else "No"
        return (question.replace(t.MME_SUFFIX, ""),
                t.a_compare(verdict, count_a, t.counted(kind_a, value_a, count_a), t.counted(kind_b, value_b, count_b)))
    total = len(scene.objects)
    n = rng.choice([total - 1, total])
    return t.q_more_than_total(n).replace(t.MME_SUFFIX, ""), t.a_total(t.YES if total > n else t.NO, total)


def _counting(scene: Scene, config: WorldConfig, rng: random.Random) -> tuple[str, str]:
    counts = scene.shape_counts()
    shape = rng.choice(sorted(shape for shape in counts if counts[shape]))
    n = counts[shape]
    return t.q_how_many(shape), t.a_there_are(n, t.plural(shape, n))


def _relation(scene: Scene, config: WorldConfig, rng: random.Random) -> tuple[str, str]:
    kinds = scene.kind_counts()
    unique = [obj for obj in scene.objects if kinds[(obj.color, obj.shape)] == 1]
    if len(unique) < 2:
        return _what_at(scene, config, rng)
    a, b = rng.sample(unique, 2)
    up, down, same_row = t.VERTICAL_RELATIONS
    left, right, same_col = t.HORIZONTAL_RELATIONS
    vertical = up if a.row < b.row else down if a.row > b.row else same_row
    horizontal = left if a.col < b.col else right if a.col > b.col else same_col
    subject, other = f"{a.color} {a.shape}", f"{b.color} {b.shape}"
    return t.q_relation(subject, other), t.a_relation(subject, vertical, horizontal, other)


def _environment(scene: Scene, config: WorldConfig, rng: random.Random) -> tuple[str, str]:
    return t.Q_BACKGROUND, t.a_background(background_name(config))


def _holistic(scene: Scene, config: WorldConfig, rng: random.Random) -> tuple[str, str]:
    return t.Q_DESCRIBE, describe(scene, config)


def _other(scene: Scene, config: WorldConfig, rng: random.Random) -> tuple[str, str]:
    return t.Q_SHAPES, t.a_shapes([t.plural(shape) for shape in config.shapes if scene.shape_counts()[shape]])


BUILDERS = {"attribute": _attribute, "adversarial": _adversarial, "comparison": _comparison,
            "counting": _counting, "relation": _relation, "environment": _environment, "holistic": _holistic,
            "other": _other}


def _item(scene: Scene, config: WorldConfig, kind: str, seed: int, asked: set[str]) -> dict[str, Any]:
    """The item of one (scene, type); its rng depends on (seed, scene, type) only, so adding scenes or types
    changes no other item. ``asked``: the scene's questions so far (two fallbacks must not ask the same cell)."""
    rng = random.Random(f"silkfire-mmhal/{seed}/{scene.scene_id}/{kind}")
    question, gt_answer = BUILDERS[kind](scene, config, rng)
    while question in asked:  # only the "What is in the <cell>?" fallback can repeat; 9 cells, 8 types
        question, gt_answer = _what_at(scene, config, rng)
    asked.add(question)
    return {
        "item_id": f"{scene.scene_id}/{kind}",
        "question_type": kind,
        "question_topic": f"Shapes/{len(scene.objects)} object{'s' if len(scene.objects) != 1 else ''}",
        "image_id": scene.scene_id,
        "image_content": sorted({f"{obj.color} {obj.shape}" for obj in scene.objects}),
        "question": question,
        "gt_answer": gt_answer,
        "image_path": scene.image,
    }


def build_mmhal_items(scenes: Sequence[Scene], config: WorldConfig, seed: int = 0,
                      max_items: int | None = None) -> list[dict[str, Any]]:
    """One item of each of the 8 types per scene (in order), types in MMHAL_TYPES order, so the type of item i
    is MMHAL_TYPES[i % 8] as in the benchmark. ``max_items`` caps items, keeping whole scenes (rounded down to
    a multiple of 8; 1..7 is an error, it would keep nothing)."""
    if max_items is not None:
        if 0 < max_items < len(MMHAL_TYPES):  # would round down to nothing: say so rather than score no item
            raise ValueError(f"mmhal: max_items {max_items} is less than one scene's {len(MMHAL_TYPES)} items "
                             f"(whole scenes are kept); use {len(MMHAL_TYPES)} or more")
        scenes = scenes[:max(0, max_items) // len(MMHAL_TYPES)]
    items = []
    for scene in scenes:
        asked: set[str] = set()
        items.extend(_item(scene, config, kind, seed, asked) for kind in MMHAL_TYPES)
    return items


SPLITS = ("test", "val")


def build_mmhal_world(world_dir: str | Path, out: str | Path | None = None, seed: int = 0,
                      max_items: int | None = None, *, split: str = "test") -> list[dict[str, Any]]:
    """Items from the world's held-out scenes of ``split`` (test: the benchmark set; val: a validation set to
    choose settings on without looking at test); written as JSONL to ``out`` when given."""
    if split not in SPLITS:
        raise ValueError(f"mmhal: split must be one of {list(SPLITS)}, got {split!r}")
    config, scenes = load_world(world_dir)
    held_out = sorted((scene for scene in scenes.values() if scene.split == split), key=lambda s: s.scene_id)
    items = build_mmhal_items(held_out, config, seed, max_items)
    if out is not None:
        write_jsonl(out, items)
    return items


# ---- the oracle rater ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sum:
    """A stated sum ("1 plus 2 is 3"): true when the arithmetic is right (nothing about the image)."""

    a: int
    b: int
    stated: int
    kind: str = "sum_stated"

    def holds(self, scene: Scene, config: WorldConfig) -> bool:
        return self.a + self.b == self.stated

    def text(self, config: WorldConfig) -> str:
        return f"{self.a} plus {self.b} is {self.stated}"

    def truth(self, scene: Scene, config: WorldConfig) -> str:
        return f"{self.a} plus {self.b} is {self.a + self.b}"


class OracleMMHalRater:
    """Rates ``model_answer`` of items 0-6 against the scene graph (rules in the module docstring)."""

    def __init__(self, config: WorldConfig, scenes: Mapping[str, Scene]) -> None:
        self.config = config
        self.scenes = dict(scenes)
        self.reader = QuestionReader(config)
        number = "|".join(sorted(NUMBER_WORDS, key=len, reverse=True)) + r"|\d+"
        self.arithmetic = re.compile(rf"\b(?P<a>{number})\s+plus\s+(?P<b>{number})\b"
                                     rf"(?:\s+(?:is|are|equals?|makes?|gives?|=)\s+(?P<c>{number})\b)?", re.I)

    @classmethod
    def from_world(cls, world_dir: str | Path) -> OracleMMHalRater:
        return cls(*load_world(world_dir))

    def rate_answer(self, question: str, answer: str, scene: Scene) -> tuple[int, str]:
        """(rating 0..6, rationale) of one answer."""
        config = self.config
        if not answer.strip():
            return 3, "Empty response: not informative, nothing hallucinated."
        parsed = self.reader.read_question(question)
        result = self._answer(parsed, answer, scene) if parsed is not None else None
        answer_claims: list[Any] = list(result.claims) if result is not None else []
        # arithmetic is read apart: its numbers are no object counts ("0 plus 0 circles" is not "0 circles")
        masked, sums, said_counts = self._arithmetic(answer)
        read = [c for c in self.reader.claims(masked) + said_counts if c not in answer_claims]
        claims = answer_claims + read + sums
        false = [claim for claim in claims if not claim.holds(scene, config)]
        # naming what the question already names ("... of the blue square") is not information
        asked = {group for group in (parsed.subject, parsed.other, parsed.claim.group if parsed.claim else None)
                 if group is not None} if parsed is not None else set()
        # a sum is not information about the image even when it adds up: a degenerate "0 plus 0 circles" or a
        # correct "1 plus 2 is 3" restates counts at best
        true_extra = [claim for claim in read if claim.holds(scene, config) and claim not in said_counts
                      and not (claim.kind == "exists" and claim.group in asked)
                      and not _implied(claim, answer_claims)]
        answered = result.answered if result is not None else bool(claims)
        if false:
            informative = int(answered) + len(true_extra)
            rating = 2 if informative >= 2 else informative
            errors = "; ".join(f"{c.text(config)} ({c.truth(scene, config)})" for c in false)
            return rating, (f"Hallucination: {errors}; {'an' if answered else 'no'} answer and {len(true_extra)} "
                            "further supported statement(s).")
        if not answered:
            note = f" ({result.note})" if result is not None and result.note else ""
            return 3, f"No hallucination, but the response does not answer the question{note}."
        correct = result.correct if result is not None else True
        describing = parsed is not None and parsed.kind == "describe"
        if not correct:
            return 4, "No hallucination; the answer is incomplete."
        if true_extra and ANALYSIS.search(answer):
            return 6, "Correct, with further correct detail and analysis; no hallucination."
        if true_extra or describing:
            return 5, "Correct and informative; no hallucination."
        return 4, "Correct; no hallucination."

    def _answer(self, parsed: Question, answer: str, scene: Scene) -> Answer:
        if parsed.kind == "what_at" and parsed.subject is not None:
            return self._what_at(parsed.subject, answer, scene)
        return self.reader.answer(parsed, answer, scene)

    def _what_at(self, cell: Group, response: str, scene: Scene) -> Answer:
        """"What is in the <cell>?": only a statement about that cell answers it. (The shared reader took any
        located object for the answer, so a true statement about another cell was rated 4 "incomplete", and an
        object named after another cell -- "The middle right holds a blue square" -- was put in the asked one.)
        An unplaced object belongs to the one cell its sentence names when that is not the asked cell."""
        config, reader = self.config, self.reader
        head = answer_text(response)
        asked = (cell.row, cell.col)
        named = {(config.row_names.index(m.group("row").lower()), config.col_names.index(m.group("col").lower()))
                 for m in reader.position.finditer(head)}
        elsewhere = named - {asked}
        row, col = asked if asked in named or len(elsewhere) != 1 else next(iter(elsewhere))
        placed = [claim if claim.group.row is not None else replace(claim, group=replace(claim.group, row=row,
                                                                                          col=col))
                  for claim in reader.claims(head) if claim.kind == "exists"]
        here = tuple(claim for claim in placed if (claim.group.row, claim.group.col) == asked)
        at = [obj for obj in scene.objects if cell.matches(obj)]
        expected = object_text(at[0], config) if at else "nothing"
        if here:
            correct = bool(at) and any(claim.group.shape == at[0].shape for claim in here) and all(
                claim.holds(scene, config) for claim in here)
            return Answer(True, here, correct, expected)
        if reader.says_absent(head) and (asked in named or not elsewhere):
            return Answer(True, (Claim("absent", cell),), not at, expected)
        return Answer(False, (), False, expected, note="it speaks about another cell" if placed or elsewhere
                      else "")

    def _arithmetic(self, text: str) -> tuple[str, list[Any], list[Claim]]:
        """(text without its sums, the sums with a stated result, the counts that sums of a group state).

        "1 plus 2 is 3" is checked as arithmetic (a wrong result is a false statement); "1 plus 2 circles"
        states the count 3 of circles (checked, never information). Without this the claim reader took the
        last addend for a count: "No, 0 plus 0 circles." read as a true "no circle" and earned a 5."""
        sums: list[Any] = []
        counts: list[Claim] = []
        for match in reversed(list(self.arithmetic.finditer(text))):
            a, b = _number(match.group("a")), _number(match.group("b"))
            assert a is not None and b is not None
            if match.group("c") is not None:
                sums.append(Sum(a, b, _number(match.group("c")) or 0))
            else:
                group = self.reader.phrase.match(text, match.end() + 1) if match.end() < len(text) else None
                if group is not None and not group.group("det"):
                    counts.append(Claim("count", self.reader.group(group.group("shape"), group.group("color"),
                                                                   group.group("size"), group.group("row"),
                                                                   group.group("col")), n=a + b))
            text = text[:match.start()] + text[match.end():]
        return text, sums[::-1], counts[::-1]

    def rate(self, items: Sequence[Mapping[str, Any]], answer_key: str = "model_answer") -> list[dict[str, Any]]:
        """Copies of items with ``rating`` (int) and ``rationale`` added."""
        out = []
        for index, item in enumerate(items):
            scene_id = str(item.get("image_id"))
            if scene_id not in self.scenes:
                raise KeyError(f"mmhal oracle: item {index}: image_id {scene_id!r} is not a world scene")
            answer = item.get(answer_key)
            if not isinstance(answer, str):
                raise ValueError(f"mmhal oracle: item {index}: {answer_key!r} must be a string, got {answer!r}")
            rating, why = self.rate_answer(str(item["question"]), answer, self.scenes[scene_id])
            out.append({**item, "rating": rating, "rationale": why})
        return out


def _implied(claim: Claim, answer_claims: Sequence[Any]) -> bool:
    """Whether an object claim only restates the answer: "A large red circle." answers "What is in the top
    left?" with a circle placed in that cell; the same phrase read unplaced is no further statement."""
    if claim.kind != "exists" or claim.negated:
        return False
    wanted = {key: value for key, value in vars(claim.group).items() if value is not None}
    return any(isinstance(other, Claim) and other.kind == "exists" and not other.negated
               and all(getattr(other.group, key) == value for key, value in wanted.items())
               for other in answer_claims)


# ---- the API rater ---------------------------------------------------------------------------------------------
MMHAL_PROMPT = """Please act as an impartial and objective judge and evaluate the quality of a response from a
Large Multimodal Model (LMM) to a user question about an image. You cannot see the image; you are given its
contents, the question, a standard human-generated answer and the LMM's response.

Judge informativeness and hallucination. A response hallucinates when it states something about the image that
the image contents and the standard answer do not support (an object, an attribute, a count, a position). Do not
count as hallucination statements that are plausible from the given contents, or the LMM politely declining.

Rate the response on this scale:
- Rating: 6, very informative with good analysis or reasoning, no hallucination
- Rating: 5, very informative, no hallucination
- Rating: 4, somewhat informative, no hallucination
- Rating: 3, not informative, no hallucination
- Rating: 2, very informative, with hallucination
- Rating: 1, somewhat informative, with hallucination
- Rating: 0, not informative, with hallucination

### Example
Image Contents: red circle, blue square
Question: How many circles are there?
Standard Human-Generated Answer: There is 1 circle.
LMM Response to Evaluate: There are 2 circles, a red one and a green one.
Your Response: The image holds one circle, so the count and the green circle are hallucinated; the response
is somewhat informative. Rating: 1

### Example
Image Contents: yellow triangle
Question: What color is the square?
Standard Human-Generated Answer: There is no square in the image.
LMM Response to Evaluate: There is no square in the image; the only shape is a yellow triangle.
Your Response: Correct about the absent square, adds a correct detail, no hallucination. Rating: 5

Explain briefly, then end with one line "Rating: N" (N from 0 to 6).

Image Contents: [[content]]
Question: [[question]]
Standard Human-Generated Answer: [[gt_answer]]
LMM Response to Evaluate: [[answer]]
"""


def mmhal_prompt(item: Mapping[str, Any], answer: str) -> str:
    content = item.get("image_content") or []
    return (MMHAL_PROMPT.replace("[[content]]", ", ".join(map(str, content)))
            .replace("[[question]]", str(item["question"])).replace("[[gt_answer]]", str(item["gt_answer"]))
            .replace("[[answer]]", answer))


def parse_mmhal_rating(text: str) -> int:
    """The official rule: s when exactly one of "rating: 0".."rating: 6" occurs in ``text.lower()``, else 0."""
    lowered = text.lower()
    found = [score for score in range(7) if f"rating: {score}" in lowered]
    return found[0] if len(found) == 1 else 0


def mmhal_readable(text: str) -> bool:
    """Whether a judge reply holds exactly one "rating: N" (else the official rule's 0 is a parse failure, not a
    verdict: a refusal or an off-format reply)."""
    lowered = text.lower()
    return sum(f"rating: {score}" in lowered for score in range(7)) == 1


class ApiMMHalRater:
    """MMHal's judge through an OpenAI-compatible model (text only, as the benchmark), with the disk cache.

    As the VLFeedback judge (:class:`silkfire.vlfeedback.judges.ApiJudge`), only readable replies (exactly one
    "rating: N") are cached; an unreadable one is rated by the official rule this run (0), kept in the cache's
    side record and asked again on the next run, at most ``max_unparsable_attempts`` replies per item; metrics
    ``mmhal_judge_unparsable``, ``_retried``, ``_unparsable_given_up``."""

    def __init__(self, client_config: Any, cache_dir: str | Path, progress: bool = False,
                 max_unparsable_attempts: int = 3) -> None:
        from silkfire.vlfeedback.cache import AnnotationCache

        self.client_config = client_config
        self.cache = AnnotationCache(cache_dir)
        self.progress = progress
        self.max_unparsable_attempts = max(1, int(max_unparsable_attempts))
        self._client: Any = None
        self._counts = {"items": 0, "cache_hits": 0, "failed": 0, "unparsable": 0, "retried": 0,
                        "unparsable_given_up": 0}

    def metrics(self) -> dict[str, float]:
        usage = self._client.usage.metrics("mmhal_judge_") if self._client is not None else {}
        return {**{f"mmhal_judge_{key}": value for key, value in self._counts.items()}, **usage}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def rate(self, items: Sequence[Mapping[str, Any]], answer_key: str = "model_answer") -> list[dict[str, Any]]:
        """Copies of items with ``review`` (the judge text) and ``rating`` (parsed); failures raise ApiError
        after the other replies are cached."""
        from silkfire.vlfeedback.cache import annotation_key
        from silkfire.llm.client import ApiError, ChatClient, user_message

        model = self.client_config.model
        keys, todo = [], {}
        replies: dict[str, str] = {}  # key -> an unreadable reply (this run's, or the last one past the bound)

        def readable(entry: Mapping[str, Any]) -> bool:
            return mmhal_readable(str(entry.get("text", "")))

        for index, item in enumerate(items):
            answer = item.get(answer_key)
            if not isinstance(answer, str):
                raise ValueError(f"mmhal api rater: item {index}: {answer_key!r} must be a string, got {answer!r}")
            context = "|".join(map(str, item.get("image_content") or [])) + "|" + str(item["gt_answer"])
            key = annotation_key(model, MMHAL_PROMPT_VERSION, str(item["question"]), context, [answer])
            keys.append(key)
            if self.cache.get(key, readable) is not None:
                self._counts["cache_hits"] += 1
            elif key in todo or key in replies:
                continue
            elif self.cache.attempts(key) >= self.max_unparsable_attempts:  # the bound: the last reply stands
                replies[key] = str((self.cache.last_unparsable(key) or {}).get("text", ""))
                self._counts["unparsable_given_up"] += 1
            else:
                todo[key] = index
                if self.cache.attempts(key) or key in self.cache:
                    self._counts["retried"] += 1
        failures: list[str] = []
        if todo:
            if self._client is None:
                self._client = ChatClient(self.client_config)
            order = list(todo.items())
            requests = [[user_message(mmhal_prompt(items[index], items[index][answer_key]))] for _, index in order]
            for position, outcome in self._client.chat_many(requests):
                key, index = order[position]
                if isinstance(outcome, ApiError):
                    self._counts["failed"] += 1
                    failures.append(f"item {index}: {outcome}")
                else:
                    entry = {"key": key, "id": items[index].get("image_id"), "model": model,
                             "template": MMHAL_PROMPT_VERSION, "text": outcome.text}
                    if mmhal_readable(outcome.text):
                        self.cache.put(entry)
                    else:  # not a verdict: kept aside, asked again next run (bounded)
                        self.cache.put_unparsable(entry)
                        replies[key] = outcome.text
                        self._counts["unparsable"] += 1
        if failures:
            raise ApiError(f"mmhal api rater: {len(failures)} item(s) not rated ({failures[0]}); the rest is "
                           "cached, re-run to resume")
        out = []
        for item, key in zip(items, keys):
            entry = self.cache.get(key, readable)
            text = entry["text"] if entry is not None else replies[key]
            out.append({**item, "review": text, "rating": parse_mmhal_rating(text)})
            self._counts["items"] += 1
        return out


# ---- scoring ---------------------------------------------------------------------------------------------------
def item_rating(item: Mapping[str, Any], index: int) -> int:
    """An item's rating: integer ``rating`` 0..6, else parsed from its judge text; errors name the item."""
    rating = item.get("rating")
    if rating is not None:
        if isinstance(rating, bool) or not isinstance(rating, int) or not 0 <= rating <= 6:
            raise ValueError(f"item {index}: 'rating' must be an integer in 0..6, got {rating!r}")
        return rating
    for key in TEXT_KEYS:
        if isinstance(item.get(key), str):
            return parse_mmhal_rating(item[key])
    raise ValueError(f"item {index}: no 'rating' (integer 0..6) and no judge text ({', '.join(TEXT_KEYS)})")


def score_mmhal(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``{"score", "hallucination_rate", "per_type": {type: mean}}`` (types by position, i % 8)."""
    if not items:
        raise ValueError("no MMHal items to score")
    ratings = [item_rating(item, index) for index, item in enumerate(items)]
    per_type: dict[str, list[int]] = {}
    for index, rating in enumerate(ratings):
        per_type.setdefault(MMHAL_TYPES[index % len(MMHAL_TYPES)], []).append(rating)
    return {
        "score": sum(ratings) / len(ratings),
        "hallucination_rate": sum(rating < 3 for rating in ratings) / len(ratings),
        "per_type": {kind: sum(values) / len(values) for kind, values in per_type.items()},
    }


def score_mmhal_file(path: str | Path) -> dict[str, Any]:
    """Score a JSONL / JSON-list file of rated (or judge-reviewed) items; every bad item is reported at once
    (:class:`silkfire.io.RecordErrors`: file, line/record, field); an empty file is an error."""
    # JSONL, a JSON list or parquet (rows named 'FILE: row N'; image bytes are not read)
    items = checked_records(path, *read_located(path), lambda index, item: item_rating(item, index),
                            "no MMHal items (an empty file?): nothing to score")
    return score_mmhal(items)
