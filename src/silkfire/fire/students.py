"""FIRE students: the ``Student`` protocol, a local VLM folder, an OpenAI-compatible endpoint, scripted students.

A student writes its next turn ("Thought: ...\\nAnswer: ...") from what a FIRE student may see::

    student.respond(items: Sequence[StudentInput], image_root: Path) -> list[str | None]   # None: no answer

``StudentInput`` holds the image, the question, the student's own earlier responses and the teacher's Feedback
texts only -- never a score, never the ground truth (the dialogue loop strips scores with
silkfire.fire.text.feedback_text before building it).

- :class:`HFStudent`: a local HF VLM folder (or hub id), greedy, batched across dialogues
  (silkfire.fire.generation.generate_chat), ``max_new_tokens`` 160 as FIRE-1M.
- :class:`ApiStudent`: the same conversation through the OpenAI-compatible client (silkfire.llm.client), with the
  "Thought/Answer" format hint appended to the question (an untrained model does not know FIRE's format).
- :class:`ScriptedStudent`: a simulator for the shapes world that makes FIRE-style training dialogues with real
  refinements (see its docstring). FIRE-100K's dialogues were written by GPT-4V playing both roles; here no strong
  model is available offline, so a scripted student with known failure profiles plays the student and the oracle
  plays the teacher. Scripted students read the world record (``StudentInput.world``: the scene graph and the
  reference answer) as their *perception*, the stand-in for looking at the image -- the same licence the
  scripted policies of the Silkie branch take. They still never see the teacher's score, and they change their
  answer only in reaction to a feedback turn.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from silkfire.fire.prompts import student_turns
from silkfire.fire.text import format_student
from silkfire.world import templates as t
from silkfire.world.config import WorldConfig
from silkfire.world.scene import Scene, WorldObject, scene_from_record

SCRIPTED_PROFILES = ("correct", "careless", "stubborn")


@dataclass(frozen=True)
class StudentInput:
    """What the student sees: image, question, its earlier responses, the teacher's feedback texts (no scores).

    ``world`` (scripted students only): the world question record -- ``family``, ``category``, ``answer`` and
    ``scene`` (a scenes.jsonl record or a ``Scene``); real students ignore it.
    """

    id: str
    image: str
    question: str
    responses: tuple[str, ...] = ()
    feedbacks: tuple[str, ...] = ()
    world: Mapping[str, Any] | None = field(default=None, compare=False)

    def turns(self, format_hint: bool = False) -> list[tuple[str, str | None]]:
        """The conversation to continue: ``(question, r1), (feedback1, r2), ..., (feedback_k, None)``."""
        return student_turns(self.question, self.responses, self.feedbacks, format_hint=format_hint)


@runtime_checkable
class Student(Protocol):
    name: str

    def respond(self, items: Sequence[StudentInput], image_root: Path | None = None) -> list[str | None]:
        ...

    def describe(self) -> dict[str, Any]:
        ...


class HFStudent:
    """A local VLM folder (e.g. models/sft/model, or the FIRE-trained student) answering greedily in batches."""

    def __init__(self, path: str | Path, name: str = "hf", *, dtype: str = "auto", device: str = "auto",
                 batch_size: int = 16, max_new_tokens: int = 160, format_hint: bool = False, progress: bool = True):
        self.path, self.name = str(path), name
        self.dtype, self.device = dtype, device
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.format_hint, self.progress = format_hint, progress
        self._loaded: tuple[Any, Any] | None = None

    def describe(self) -> dict[str, Any]:
        return {"kind": "hf", "path": self.path, "dtype": self.dtype, "max_new_tokens": self.max_new_tokens,
                "format_hint": self.format_hint}

    def respond(self, items: Sequence[StudentInput], image_root: Path | None = None) -> list[str | None]:
        from silkfire.fire.generation import generate_chat
        from silkfire.models.loading import load_vlm

        if self._loaded is None:
            self._loaded = load_vlm(self.path, dtype=self.dtype, device=self.device)
        model, processor = self._loaded
        return list(generate_chat(model, processor, [item.turns(self.format_hint) for item in items],
                                  [item.image for item in items], Path(image_root or "."),
                                  batch_size=self.batch_size, max_new_tokens=self.max_new_tokens,
                                  progress=self.progress, desc="student"))


class ApiStudent:
    """A chat model behind an OpenAI-compatible endpoint; the image goes with the question."""

    def __init__(self, client_config: Mapping[str, Any], name: str = "api", format_hint: bool = True):
        from silkfire.llm.client import ClientConfig

        self.config = ClientConfig.from_mapping(client_config)
        self.name, self.format_hint = name, format_hint
        self.usage: dict[str, float] = {}

    def describe(self) -> dict[str, Any]:
        return {"kind": "api", "format_hint": self.format_hint, **self.config.params()}

    def messages(self, item: StudentInput, image_root: Path | None) -> list[dict[str, Any]]:
        from silkfire.images import check_image
        from silkfire.llm.client import user_message

        messages: list[dict[str, Any]] = []
        for index, (user, assistant) in enumerate(item.turns(self.format_hint)):
            images = [check_image(image_root or ".", item.image)] if index == 0 else []
            messages.append(user_message(user, images=images))
            if assistant is not None:
                messages.append({"role": "assistant", "content": assistant})
        return messages

    def respond(self, items: Sequence[StudentInput], image_root: Path | None = None) -> list[str | None]:
        from silkfire.llm.client import ApiError, ChatClient

        replies: list[str | None] = [None] * len(items)
        with ChatClient(self.config) as client:
            for index, outcome in client.chat_many([self.messages(item, image_root) for item in items]):
                replies[index] = None if isinstance(outcome, ApiError) else outcome.text
            self.usage = client.usage.metrics()
        return replies


# ---- the scripted student ----------------------------------------------------------------------------------------
@dataclass
class _Belief:
    """What a scripted student currently believes: the kind of question and its remaining defects."""

    kind: str
    defects: list[Any]


class ScriptedStudent:
    """A shapes-world student with a failure profile that refines from feedback with some probability.

    First answer: wrong with probability ``error_rate`` (profile ``correct``: never), with one or two *defects*
    natural for the question kind -- a count off by one or two, another colour, a wrong row and/or column, an
    absent object described as present (probe), a flipped yes/no, a description with objects dropped or
    recoloured. After each feedback turn the student removes one defect with probability ``refine_prob`` (profile
    ``stubborn``: ``refine_prob`` / 3), else repeats its answer -- so dialogues end in 1-3 rounds as FIRE's do,
    and the oracle's "no improvement" rule ends the stubborn ones. Seeded per (seed, name, dialogue id, round).
    """

    def __init__(self, profile: str = "careless", *, error_rate: float = 0.8, refine_prob: float = 0.7,
                 seed: int = 0, world: WorldConfig | Mapping[str, Any] | None = None, name: str | None = None):
        if profile not in SCRIPTED_PROFILES:
            raise ValueError(f"unknown scripted student profile {profile!r}; profiles are {list(SCRIPTED_PROFILES)}")
        if not (0.0 <= error_rate <= 1.0 and 0.0 <= refine_prob <= 1.0):
            raise ValueError("error_rate and refine_prob must lie in [0, 1]")
        self.profile, self.name = profile, name or f"scripted-{profile}"
        self.error_rate = 0.0 if profile == "correct" else error_rate
        self.refine_prob = refine_prob / 3 if profile == "stubborn" else refine_prob
        self.seed = seed
        self.world = world if isinstance(world, WorldConfig) else WorldConfig.from_mapping(world or {})
        self._beliefs: dict[str, _Belief] = {}

    def describe(self) -> dict[str, Any]:
        return {"kind": "scripted", "profile": self.profile, "error_rate": self.error_rate,
                "refine_prob": self.refine_prob, "seed": self.seed}

    def respond(self, items: Sequence[StudentInput], image_root: Path | None = None) -> list[str | None]:
        return [self.answer(item) for item in items]

    def answer(self, item: StudentInput) -> str:
        record = item.world
        if not record or record.get("answer") is None:
            raise ValueError(f"scripted student: dialogue {item.id!r} has no world record (scene graph and "
                             "answer); scripted students only play the shapes world")
        scene = record.get("scene")
        scene = scene if isinstance(scene, Scene) or scene is None else scene_from_record(scene)
        rng = random.Random(f"silkfire-fire-student/{self.seed}/{self.name}/{item.id}/{len(item.responses)}")
        if not item.responses or item.id not in self._beliefs:
            self._beliefs[item.id] = self._first_belief(record, scene, rng)
        belief = self._beliefs[item.id]
        refined = False
        if item.responses and belief.defects and rng.random() < self.refine_prob:
            belief.defects.pop(0)
            refined = True
        answer = self._render(belief, record, scene)
        return format_student(self._thought(bool(item.responses), refined), answer)

    # ---- beliefs -------------------------------------------------------------------------------------------
    def _first_belief(self, record: Mapping[str, Any], scene: Scene | None, rng: random.Random) -> _Belief:
        kind = question_kind(record)
        if rng.random() >= self.error_rate:
            return _Belief(kind, [])
        truth = str(record["answer"])
        if kind == "count":
            size = rng.choice([1, 1, 2])
            sign = 1 if int(truth) - size < 0 or rng.random() < 0.5 else -1
            return _Belief(kind, [sign] * size)  # each defect is one unit of miscounting
        if kind == "color":
            return _Belief(kind, [rng.choice([c for c in self.world.color_names if c != truth])])
        if kind == "position":
            row, col = self._cell(truth)
            wrong_row = rng.choice([r for r in range(len(self.world.row_names)) if r != row])
            wrong_col = rng.choice([c for c in range(len(self.world.col_names)) if c != col])
            defects = [("row", wrong_row), ("col", wrong_col)]
            rng.shuffle(defects)
            return _Belief(kind, defects[:rng.choice([1, 2])])
        if kind == "probe":
            if record.get("category") == "color":
                return _Belief(kind, [t.a_color(rng.choice(self.world.color_names))])
            return _Belief(kind, [t.a_where(t.position_phrase(rng.choice(self.world.row_names),
                                                              rng.choice(self.world.col_names)))])
        if kind == "describe" and scene is not None:
            objects = list(scene.objects)
            defects: list[Any] = []
            for _ in range(rng.choice([1, 2])):
                index = rng.randrange(len(objects))
                if len(objects) > 1 and rng.random() < 0.5:
                    defects.append(("drop", index))
                else:
                    obj = objects[index]
                    defects.append(("color", index, rng.choice([c for c in self.world.color_names if c != obj.color])))
            return _Belief(kind, defects)
        return _Belief(kind, ["flip"])  # yes/no, and anything else: the opposite / a wrong answer

    def _cell(self, where: str) -> tuple[int, int]:
        words = where.lower().replace(".", " ").split()
        row = next(i for i, name in enumerate(self.world.row_names) if name in words)
        col = next(i for i, name in enumerate(self.world.col_names) if name in words)
        return row, col

    def _render(self, belief: _Belief, record: Mapping[str, Any], scene: Scene | None) -> str:
        truth = str(record["answer"])
        if not belief.defects:
            return truth
        kind, defects = belief.kind, belief.defects
        if kind == "count":
            return t.a_count(max(0, int(truth) + sum(defects)))
        if kind in ("color", "probe"):
            return str(defects[0])
        if kind == "position":
            row, col = self._cell(truth)
            for axis, value in defects:
                row, col = (value, col) if axis == "row" else (row, value)
            return t.a_where(t.position_phrase(self.world.row_names[row], self.world.col_names[col]))
        if kind == "describe" and scene is not None:
            objects: list[WorldObject | None] = list(scene.objects)
            for defect in defects:
                if defect[0] == "drop":
                    objects[defect[1]] = None
                else:
                    obj = objects[defect[1]]
                    if obj is not None:
                        objects[defect[1]] = WorldObject(obj.shape, defect[2], obj.size, obj.row, obj.col)
            kept = [obj for obj in objects if obj is not None]
            phrases = [t.object_phrase(obj.size, obj.color, obj.shape,
                                       t.position_phrase(self.world.row_names[obj.row], self.world.col_names[obj.col]),
                                       first=index == 0) for index, obj in enumerate(kept)]
            return t.a_describe(phrases)
        if truth in (t.YES, t.NO):
            return t.NO if truth == t.YES else t.YES
        return "I am not sure."

    @staticmethod
    def _thought(later: bool, refined: bool) -> str:
        if not later:
            return FIRST_LOOK
        return REFINED_LOOK if refined else STUBBORN_LOOK


# How a scripted student says it looks (the Thought of its turns). Short on purpose: a world model's tokenizer
# is learnt from the world's questions and answers, so any other word is spelt letter by letter. The first
# version ("I go through the grid row by row and name each object.": 46 tokens before a first answer, 77 before a
# refined one; now 23 and 25) cost the FIRE-trained tiny student first-turn accuracy (README, FIRE branch).
# (A Thought per kind of question would only repeat what the question says.)
FIRST_LOOK = "I look at the image."
REFINED_LOOK = "I look at the image again."
STUBBORN_LOOK = "I still see the same."


def question_kind(record: Mapping[str, Any]) -> str:
    """yes_no (MME-style), probe (about something that may be absent), else the world category."""
    family, category = record.get("family"), record.get("category")
    if family == "mme":
        return "yes_no"
    if family == "probe":
        return "probe"
    return str(category)


def correct_turn(record: Mapping[str, Any]) -> str:
    """A world record's answer as a right first student turn: ``Thought: <how it looks>\nAnswer: <answer>``."""
    return format_student(FIRST_LOOK, str(record["answer"]))


def build_student(cfg: Mapping[str, Any], *, root: Path | None = None, seed: int = 0,
                  world: Any = None) -> Student:
    """A student from config: ``kind: hf`` (``path``, ``dtype``, ``device``, ``batch_size``, ``max_new_tokens``,
    ``format_hint``), ``kind: api`` (silkfire.llm.client keys, flat or under ``client``; ``format_hint``),
    ``kind: scripted`` (``profile``, ``error_rate``, ``refine_prob``). ``path`` is relative to ``root``."""
    data = dict(cfg)
    kind = data.pop("kind", None)
    name = str(data.pop("name", None) or kind)
    if kind == "hf":
        path = data.pop("path", None)
        if not path:
            raise ValueError("fire student kind hf needs 'path' (a model folder, e.g. models/sft/model)")
        full = Path(path) if root is None or Path(path).is_absolute() else Path(root) / path
        keys = ("dtype", "device", "batch_size", "max_new_tokens", "format_hint")
        student: Student = HFStudent(full, name=name, **{k: data.pop(k) for k in keys if k in data})
    elif kind == "api":
        from silkfire.fire.teacher import _client_keys

        client = _client_keys(data)
        student = ApiStudent(dict(client), name=name, format_hint=bool(data.pop("format_hint", True)))
    elif kind == "scripted":
        keys = ("profile", "error_rate", "refine_prob")
        student = ScriptedStudent(**{k: data.pop(k) for k in keys if k in data}, seed=int(data.pop("seed", seed)),
                                  world=world, name=None if name == "scripted" else name)
    else:
        raise ValueError(f"fire student: unknown kind {kind!r}; kinds are hf, api, scripted")
    if data:
        raise ValueError(f"fire student kind {kind}: unknown key(s) {sorted(data)}")
    return student

