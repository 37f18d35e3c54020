"""Every answer of every family, rechecked against the scene graph by an independent checker.

The checker below parses the question text with its own regular expressions and recomputes the answer from
the raw scenes.jsonl objects; it shares no code with silkfire.world.questions / templates.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from silkfire.world import WorldConfig, generate_world
from silkfire.world.questions import MME_BUILDERS, scene_questions
from silkfire.world.scene import Scene, WorldObject, sample_objects

SUFFIX = " Please answer yes or no."
ROW_WORDS = ["top", "middle", "bottom"]
COL_WORDS = ["left", "center", "right"]


class Checker:
    """Recomputes (family, category, answer) of a question from a list of object dicts."""

    def __init__(self, rows: list[str], cols: list[str]) -> None:
        self.rows, self.cols = rows, cols

    # -- scene facts, computed directly from the dicts --
    @staticmethod
    def _count(objects: list[dict], **attrs: str) -> int:
        return sum(all(o[k] == v for k, v in attrs.items()) for o in objects)

    def _cell(self, row_word: str, col_word: str) -> tuple[int, int]:
        return self.rows.index(row_word), self.cols.index(col_word)

    def _at(self, objects: list[dict], row_word: str, col_word: str) -> dict | None:
        row, col = self._cell(row_word, col_word)
        found = [o for o in objects if o["row"] == row and o["col"] == col]
        assert len(found) <= 1
        return found[0] if found else None

    def _group(self, objects: list[dict], phrase: str) -> int:
        words = phrase.split()
        if len(words) == 2 and words[1] == "objects":
            return self._count(objects, color=words[0])
        assert len(words) == 1 and words[0].endswith("s"), phrase
        return self._count(objects, shape=words[0][:-1])

    def _describe(self, objects: list[dict]) -> str:
        parts = []
        for i, o in enumerate(sorted(objects, key=lambda o: (o["row"], o["col"]))):
            article = "A" if i == 0 else "a"
            parts.append(f"{article} {o['size']} {o['color']} {o['shape']} in the {self.rows[o['row']]} {self.cols[o['col']]}")
        if len(parts) == 1:
            return parts[0] + "."
        return ", ".join(parts[:-1]) + " and " + parts[-1] + "."

    @staticmethod
    def _yn(value: bool) -> str:
        return "Yes" if value else "No"

    def check(self, question: str, objects: list[dict]) -> tuple[str, str, str]:
        if question.endswith(SUFFIX):
            category, answer = self._yes_no(question[: -len(SUFFIX)], objects)
            return "mme", category, answer
        return self._open(question, objects)

    def _yes_no(self, q: str, objects: list[dict]) -> tuple[str, str]:
        if m := re.fullmatch(r"Is there a (\w+) (\w+) in the image\?", q):
            return "existence", self._yn(self._count(objects, color=m[1], shape=m[2]) > 0)
        if m := re.fullmatch(r"(Is|Are) there exactly (\d+) (\w+) in the image\?", q):
            n = int(m[2])
            assert (m[1] == "Is") == (n == 1) and m[3].endswith("s") == (n != 1), q  # grammar
            shape = m[3][:-1] if n != 1 else m[3]
            answer = self._yn(self._count(objects, shape=shape) == n)
            # a "Yes" is about a present shape; a "No" may name an absent one (same number, another shape)
            assert answer == "No" or self._count(objects, shape=shape) > 0, "count Yes questions ask about a present shape"
            return "count", answer
        if m := re.fullmatch(r"Is there an object in the (\w+) (\w+) of the image\?", q):
            return "position", self._yn(self._at(objects, m[1], m[2]) is not None)
        if m := re.fullmatch(r"Is the object in the (\w+) (\w+) of the image (\w+)\?", q):
            obj = self._at(objects, m[1], m[2])
            assert obj is not None, "colour questions by cell name an occupied cell"
            return "color", self._yn(obj["color"] == m[3])
        if m := re.fullmatch(r"Is the (\w+) (\w+) in the (\w+) (\w+) of the image\?", q):
            matches = [o for o in objects if o["color"] == m[1] and o["shape"] == m[2]]
            assert len(matches) == 1, "position questions only about objects unique by colour+shape"
            row, col = self._cell(m[3], m[4])
            return "position", self._yn((matches[0]["row"], matches[0]["col"]) == (row, col))
        if m := re.fullmatch(r"Is the (\w+) in the image (\w+)\?", q):
            matches = [o for o in objects if o["shape"] == m[1]]
            assert len(matches) == 1, "colour questions only about unique shapes"
            return "color", self._yn(matches[0]["color"] == m[2])
        if m := re.fullmatch(r"Is the number of (.+) plus the number of (.+) equal to (\d+)\?", q):
            return "numerical_calculation", self._yn(self._group(objects, m[1]) + self._group(objects, m[2]) == int(m[3]))
        if m := re.fullmatch(r"Are there more than (\d+) (object|objects) in the image\?", q):
            return "comparison", self._yn(len(objects) > int(m[1]))
        if m := re.fullmatch(r"Are there more (.+) than (.+)\?", q):
            return "comparison", self._yn(self._group(objects, m[1]) > self._group(objects, m[2]))
        raise AssertionError(f"unknown yes/no question: {q!r}")

    def rationale(self, question: str, objects: list[dict]) -> str:
        """The statement of the scene's truth behind a yes/no answer, recomputed from the objects."""
        q = question[: -len(SUFFIX)]
        where = lambda o: f"{self.rows[o['row']]} {self.cols[o['col']]}"  # noqa: E731
        if m := re.fullmatch(r"Is there a (\w+) (\w+) in the image\?", q):
            found = [o for o in objects if o["color"] == m[1] and o["shape"] == m[2]]
            return f"the {m[1]} {m[2]} is in the {where(found[0])}" if found else f"there is no {m[1]} {m[2]} in the image"
        if m := re.fullmatch(r"(Is|Are) there exactly (\d+) (\w+) in the image\?", q):
            shape = m[3][:-1] if int(m[2]) != 1 else m[3]
            n = self._count(objects, shape=shape)
            return f"there is 1 {shape}" if n == 1 else f"there are {n} {shape}s"
        if m := re.fullmatch(r"Is there an object in the (\w+) (\w+) of the image\?", q):
            o = self._at(objects, m[1], m[2])
            return f"there is a {o['color']} {o['shape']} in the {m[1]} {m[2]}" if o else f"the {m[1]} {m[2]} is empty"
        if m := re.fullmatch(r"Is the object in the (\w+) (\w+) of the image (\w+)\?", q):
            return f"the object in the {m[1]} {m[2]} is {self._at(objects, m[1], m[2])['color']}"
        if m := re.fullmatch(r"Is the (\w+) (\w+) in the (\w+) (\w+) of the image\?", q):
            o = next(o for o in objects if o["color"] == m[1] and o["shape"] == m[2])
            return f"the {m[1]} {m[2]} is in the {where(o)}"
        if m := re.fullmatch(r"Is the (\w+) in the image (\w+)\?", q):
            return f"the {m[1]} is {next(o for o in objects if o['shape'] == m[1])['color']}"
        if m := re.fullmatch(r"Is the number of (.+) plus the number of (.+) equal to (\d+)\?", q):
            a, b = self._group(objects, m[1]), self._group(objects, m[2])
            return f"{a} plus {b} is {a + b}"
        if m := re.fullmatch(r"Are there more than (\d+) (object|objects) in the image\?", q):
            return "there is 1 object" if len(objects) == 1 else f"there are {len(objects)} objects"
        if m := re.fullmatch(r"Are there more (.+) than (.+)\?", q):
            return f"{self._group(objects, m[1])} against {self._group(objects, m[2])}"
        raise AssertionError(f"unknown yes/no question: {q!r}")

    def _open(self, q: str, objects: list[dict]) -> tuple[str, str, str]:
        if q == "Describe the image.":
            return "open", "describe", self._describe(objects)
        if m := re.fullmatch(r"How many (\w+)s are there\?", q):
            return "open", "count", str(self._count(objects, shape=m[1]))
        if m := re.fullmatch(r"What color is the (\w+)\?", q):
            matches = [o for o in objects if o["shape"] == m[1]]
            if not matches:
                return "probe", "color", f"There is no {m[1]} in the image."
            assert len(matches) == 1, "open colour questions only about unique shapes"
            return "open", "color", matches[0]["color"]
        if m := re.fullmatch(r"Where is the (\w+) (\w+)\?", q):
            matches = [o for o in objects if o["color"] == m[1] and o["shape"] == m[2]]
            if not matches:
                return "probe", "position", f"There is no {m[1]} {m[2]} in the image."
            assert len(matches) == 1, "open position questions only about unique objects"
            o = matches[0]
            return "open", "position", f"In the {self.rows[o['row']]} {self.cols[o['col']]}."
        raise AssertionError(f"unknown open question: {q!r}")


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(WorldConfig(), out, seed=3, progress=False)
    return out


def test_every_answer_matches_the_scene_graph(world: Path) -> None:
    scenes = {s["scene_id"]: s for s in _read(world / "scenes.jsonl")}
    checker = Checker(ROW_WORDS, COL_WORDS)
    checked: Counter[tuple[str, str, str]] = Counter()
    for name in ("train.jsonl", "val.jsonl", "open.jsonl"):
        for record in _read(world / name):
            scene = scenes[record["scene_id"]]
            assert record["image"] == scene["image"]
            family, category, answer = checker.check(record["question"], scene["objects"])
            assert (record["family"], record["category"], record["answer"]) == (family, category, answer), record
            checked[(name, family, category)] += 1
    for record in _read(world / "mme.jsonl"):
        scene_id = record["question_id"].split("/", 1)[1]
        family, category, answer = checker.check(record["question"], scenes[scene_id]["objects"])
        assert (family, record["category"], record["answer"]) == ("mme", category, answer), record
        checked[("mme.jsonl", family, category)] += 1
    # every family/category was exercised on train and on the held-out files
    assert {c for (n, f, c) in checked if n == "train.jsonl" and f == "mme"} == set(MME_BUILDERS)
    assert {c for (n, f, c) in checked if n == "open.jsonl" and f == "open"} == {"count", "color", "position", "describe"}
    assert {c for (n, f, c) in checked if n == "open.jsonl" and f == "probe"} == {"color", "position"}
    assert {c for (n, f, c) in checked if n == "mme.jsonl"} == set(MME_BUILDERS)


def test_every_yes_no_rationale_states_the_scene_truth(world: Path) -> None:
    """Train/val yes/no records carry a rationale (the truth behind the answer), recomputed independently;
    other families and the lmms-lab-format mme.jsonl carry none."""
    scenes = {s["scene_id"]: s for s in _read(world / "scenes.jsonl")}
    checker = Checker(ROW_WORDS, COL_WORDS)
    categories = set()
    for name in ("train.jsonl", "val.jsonl", "open.jsonl"):
        for record in _read(world / name):
            if record["family"] != "mme":
                assert "rationale" not in record, record
                continue
            expected = checker.rationale(record["question"], scenes[record["scene_id"]]["objects"])
            assert record["rationale"] == expected, record
            categories.add(record["category"])
    assert categories == set(MME_BUILDERS)
    assert all("rationale" not in record for record in _read(world / "mme.jsonl"))


def test_mme_has_one_yes_and_one_no_per_question_id(world: Path) -> None:
    records = _read(world / "mme.jsonl")
    assert all(set(r) == {"question_id", "image", "category", "question", "answer"} for r in records)
    answers: dict[str, list[str]] = defaultdict(list)
    for r in records:
        category, scene_id = r["question_id"].split("/", 1)
        assert category == r["category"] and r["image"] == f"images/{scene_id}.png"
        assert r["question"].endswith(SUFFIX)
        answers[r["question_id"]].append(r["answer"])
    assert all(sorted(a) == ["No", "Yes"] for a in answers.values())
    test_scenes = {s["scene_id"] for s in _read(world / "scenes.jsonl") if s["split"] == "test"}
    assert len(answers) == 6 * len(test_scenes)


def test_train_mme_pairs_are_yes_no_too(world: Path) -> None:
    pairs: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in _read(world / "train.jsonl"):
        if r["family"] == "mme":
            assert r["question"].endswith(SUFFIX)
            pairs[(r["scene_id"], r["category"])].append(r["answer"])
        else:
            assert not r["question"].endswith(SUFFIX)
    assert all(sorted(a) == ["No", "Yes"] for a in pairs.values())


def _objects_as_dicts(scene: Scene) -> list[dict]:
    return [o.to_dict() for o in scene.objects]


@pytest.mark.parametrize(
    ("mapping", "without_main"),
    [
        ({}, ()),
        # one shape, two colours: no shape pairs, many equal groups -> fallbacks. The main count form needs a
        # second shape (the "No" names the same number for another shape); the main sum form needs a third group
        # of one kind (the "No" states the same total for another pair of groups).
        ({"shapes": ["circle"], "colors": {"red": [230, 40, 40], "blue": [40, 80, 230]}, "max_objects": 1},
         ("count", "numerical_calculation")),
        ({"shapes": ["circle", "square"], "colors": {"red": [230, 40, 40], "blue": [40, 80, 230]}, "max_objects": 3},
         ("numerical_calculation",)),
        ({"row_names": ["upper", "lower"], "col_names": ["west", "mid", "east"], "max_objects": 5}, ()),
    ],
)
def test_random_scenes_under_several_configs(mapping: dict, without_main: tuple[str, ...]) -> None:
    config = WorldConfig.from_mapping(mapping)
    checker = Checker(list(config.row_names), list(config.col_names))
    rng = random.Random(11)
    variants: Counter[tuple[str, str]] = Counter()
    for index in range(400):
        objects = sample_objects(config, rng, rng.randint(config.min_objects, config.max_objects))
        scene = Scene(f"test-{index:06d}", "test", objects)
        mme, open_questions, _ = scene_questions(scene, config, seed=index)
        for qa in mme + open_questions:
            assert checker.check(qa.question, _objects_as_dicts(scene)) == (qa.family, qa.category, qa.answer)
            variants[(qa.category, qa.variant)] += 1
        assert [qa.answer for qa in mme] == ["Yes", "No"] * len(MME_BUILDERS)
    assert all(variants[(c, "main")] > 0 for c in MME_BUILDERS if c not in without_main)


def test_fallbacks_are_used_and_correct() -> None:
    config = WorldConfig.from_mapping(
        {"shapes": ["circle", "square"], "colors": {"red": [230, 40, 40], "blue": [40, 80, 230]}, "max_objects": 3}
    )
    # two red circles + ... : no unique colour+shape object, no unique shape, equal groups
    scene = Scene(
        "test-000000",
        "test",
        (
            WorldObject("circle", "red", "small", 0, 0),
            WorldObject("circle", "red", "large", 1, 1),
        ),
    )
    checker = Checker(list(config.row_names), list(config.col_names))
    rng = random.Random(0)
    for category in ("position", "color"):
        yes, no = MME_BUILDERS[category](scene, config, rng)
        assert yes.variant == no.variant == "fallback"
        assert checker.check(yes.question, _objects_as_dicts(scene))[2] == "Yes"
        assert checker.check(no.question, _objects_as_dicts(scene))[2] == "No"
    balanced = Scene(
        "test-000001",
        "test",
        (WorldObject("circle", "red", "small", 0, 0), WorldObject("square", "blue", "small", 2, 2)),
    )
    yes, no = MME_BUILDERS["comparison"](balanced, config, rng)
    assert yes.variant == "fallback"
    assert checker.check(yes.question, _objects_as_dicts(balanced))[2] == "Yes"
    assert checker.check(no.question, _objects_as_dicts(balanced))[2] == "No"
