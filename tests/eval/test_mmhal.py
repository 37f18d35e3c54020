"""MMHal on the shapes world: items (gate-valid, interleaved), oracle ratings, the official parse rule, scoring,
the API rater against a local server, and `silkfire score mmhal`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from silkfire.cli import main
from silkfire.eval.mmhal import (
    ApiMMHalRater,
    OracleMMHalRater,
    build_mmhal_items,
    build_mmhal_world,
    mmhal_prompt,
    parse_mmhal_rating,
    score_mmhal,
)
from silkfire.quality.config import MMHAL_TYPES
from silkfire.world.config import WorldConfig
from silkfire.world.scene import Scene, WorldObject


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from silkfire.world import generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(WorldConfig(train_scenes=2, val_scenes=3, test_scenes=32), out, seed=5, progress=False)
    return out


def test_items_are_interleaved_and_pass_the_gate(world: Path, tmp_path: Path) -> None:
    from silkfire.quality.config import QualityConfig
    from silkfire.quality.mmhal import validate_mmhal

    path = tmp_path / "mmhal.jsonl"
    items = build_mmhal_world(world, path)
    assert len(items) == 32 * 8 and [item["question_type"] for item in items[:8]] == list(MMHAL_TYPES)
    assert all(item["question_type"] == MMHAL_TYPES[i % 8] for i, item in enumerate(items))
    assert all(item["item_id"] == f"{item['image_id']}/{item['question_type']}" for item in items)
    assert len({item["item_id"] for item in items}) == len(items)
    assert len({(item["image_id"], item["question"]) for item in items}) == len(items)  # the gate's rule too
    assert build_mmhal_world(world, seed=0) == items and build_mmhal_world(world, seed=1) != items
    result = validate_mmhal(path, QualityConfig.from_mapping({}), tmp_path / "report", image_root=world)
    assert result.success, str(result)
    adversarial = [item for item in items if item["question_type"] == "adversarial"]
    assert all(item["gt_answer"].startswith("There is no") for item in adversarial)


def test_every_scene_gets_each_type_and_the_val_split(world: Path) -> None:
    test = build_mmhal_world(world)
    val = build_mmhal_world(world, split="val")
    assert len(val) == 3 * 8 and {item["image_id"] for item in val}.isdisjoint({item["image_id"] for item in test})
    assert all(item["image_id"].startswith("val") for item in val), [item["image_id"] for item in val][:3]
    for index in range(0, len(test), 8):  # one scene per block of 8, each type once, in MMHAL_TYPES order
        block = test[index:index + 8]
        assert len({item["image_id"] for item in block}) == 1
        assert [item["question_type"] for item in block] == list(MMHAL_TYPES)
    per_type = score_mmhal([dict(item, rating=4) for item in test])["per_type"]
    assert set(per_type) == set(MMHAL_TYPES)
    with pytest.raises(ValueError, match=r"split must be one of \['test', 'val'\], got 'train'"):
        build_mmhal_world(world, split="train")


def test_max_items_keeps_whole_scenes_and_items_are_stable(world: Path) -> None:
    full = build_mmhal_world(world)
    assert build_mmhal_world(world, max_items=20) == full[:16]  # rounded down to whole scenes
    assert build_mmhal_world(world, max_items=0) == [] and build_mmhal_world(world, max_items=8) == full[:8]
    with pytest.raises(ValueError, match="max_items 7 is less than one scene's 8 items"):
        build_mmhal_world(world, max_items=7)
    # an item depends on (seed, scene, type) only: dropping scenes in front changes no other item
    from silkfire.vlfeedback.oracle_judge import load_world

    config, scenes = load_world(world)
    ordered = sorted((s for s in scenes.values() if s.split == "test"), key=lambda s: s.scene_id)
    assert build_mmhal_items(ordered[5:], config) == full[5 * 8:]


def test_oracle_rates_reference_answers_without_hallucination(world: Path) -> None:
    items = build_mmhal_world(world)
    rater = OracleMMHalRater.from_world(world)
    rated = rater.rate([dict(item, model_answer=item["gt_answer"]) for item in items])
    assert all(item["rating"] >= 4 for item in rated), [(i["question"], i["rationale"]) for i in rated]
    assert score_mmhal(rated)["hallucination_rate"] == 0.0


CONFIG = WorldConfig()
SCENE = Scene("test-000000", "test", (WorldObject("circle", "red", "large", 0, 0),
                                      WorldObject("square", "blue", "small", 1, 2)))


@pytest.mark.parametrize(("question", "answer", "rating"), [
    ("What color is the circle?", "", 3),
    ("What color is the circle?", "I cannot tell.", 3),
    ("What color is the circle?", "Red.", 4),
    ("What color is the circle?", "The circle is red, and there is also a small blue square.", 5),
    ("What color is the circle?", "Red, because the large circle in the top left is red; a blue square is there "
                                  "too.", 6),
    ("What color is the circle?", "Green.", 1),
    ("What color is the circle?", "The circle is green.", 1),
    ("Are there more circles than squares?", "There is a green triangle.", 0),
    ("What color is the circle?", "The circle is green and there is a blue square.", 2),
    ("What color is the triangle?", "There is no triangle in the image.", 4),
    ("What color is the triangle?", "The triangle is red.", 1),
    ("Where is the red circle relative to the blue square?", "It is above and to the left of the blue square.", 4),
    ("Where is the red circle relative to the blue square?", "It is below the blue square.", 1),
    ("Describe the image.", "A large red circle in the top left and a small blue square in the middle right.", 5),
    ("Describe the image.", "A large red circle in the top left.", 4),
    ("What color is the background of the image?", "White.", 4),
    ("What color is the background of the image?", "Black.", 1),
    ("What shapes are in the image?", "Circles and squares.", 4),
    ("What shapes are in the image?", "Circles and triangles.", 1),
])
def test_oracle_rubric_on_a_constructed_scene(question: str, answer: str, rating: int) -> None:
    rater = OracleMMHalRater(CONFIG, {SCENE.scene_id: SCENE})
    got, why = rater.rate_answer(question, answer, SCENE)
    assert got == rating, why


def test_official_parse_rule() -> None:
    assert parse_mmhal_rating("Good answer. Rating: 5") == 5
    assert parse_mmhal_rating("RATING: 0\n") == 0
    assert parse_mmhal_rating("rating: 4 ... on reflection rating: 5") == 0  # two ratings -> 0
    assert parse_mmhal_rating("no rating here") == 0
    assert parse_mmhal_rating("Rating: 7") == 0 and parse_mmhal_rating("Rating:5") == 0  # official: "rating: s"
    assert parse_mmhal_rating("rating: 10") == 1  # substring rule of the official script ("rating: 1")


def test_score_hand_computed() -> None:
    ratings = [6, 0, 3, 2, 5, 4, 1, 3, 4, 2]
    items = [{"rating": r} for r in ratings[:8]] + [{"review": "Rating: 4"}, {"judge_output": "x rating: 2"}]
    result = score_mmhal(items)
    assert result["score"] == pytest.approx(sum(ratings) / 10)
    assert result["hallucination_rate"] == pytest.approx(4 / 10)  # 0, 2, 1, 2
    assert result["per_type"]["attribute"] == pytest.approx((6 + 4) / 2)
    assert result["per_type"]["adversarial"] == pytest.approx((0 + 2) / 2)
    assert result["per_type"]["other"] == 3.0 and set(result) == {"score", "hallucination_rate", "per_type"}
    with pytest.raises(ValueError, match="item 1: 'rating' must be an integer"):
        score_mmhal([{"rating": 3}, {"rating": 7}])
    with pytest.raises(ValueError, match="item 0: no 'rating'"):
        score_mmhal([{"question": "q"}])


def test_cli_score_mmhal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    listed = tmp_path / "rated.json"
    listed.write_text(json.dumps([{"rating": r} for r in (6, 1, 3)]))
    assert main(["score", "mmhal", str(listed)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"score": pytest.approx(10 / 3), "hallucination_rate": pytest.approx(1 / 3),
                       "per_type": {"attribute": 6.0, "adversarial": 1.0, "comparison": 3.0}}
    jsonl = tmp_path / "rated.jsonl"
    jsonl.write_text('{"review": "Rating: 2"}\n{"rating": "3"}\n')
    assert main(["score", "mmhal", str(jsonl)]) == 2
    assert "rated.jsonl:2: item 1: 'rating'" in capsys.readouterr().err  # file:line, then the item


def test_api_rater_with_cache(world: Path, tmp_path: Path) -> None:
    from silkfire.llm.client import ClientConfig
    from silkfire.llm.testing import FakeChatServer

    items = [dict(item, model_answer=item["gt_answer"]) for item in build_mmhal_items(
        [SCENE], CONFIG)[:3]]
    items[1]["model_answer"] = "Something else."
    assert "Standard Human-Generated Answer: " + items[0]["gt_answer"] in mmhal_prompt(items[0], "x")

    def judge(body: dict) -> str:
        text = body["messages"][0]["content"]
        return "Fine. Rating: 5" if "Something else." not in text.split("LMM Response to Evaluate:")[-1] \
            else "Hallucinated. Rating: 1"

    with FakeChatServer(judge, script=["429", "malformed"]) as server:
        config = ClientConfig(base_url=server.url, model="m", api_key_env=None, backoff_base_s=0.001)
        rated = ApiMMHalRater(config, tmp_path / "cache").rate(items)
        assert [item["rating"] for item in rated] == [5, 1, 5] and server.served == 3
        again = ApiMMHalRater(config, tmp_path / "cache")
        assert again.rate(items) == rated and server.served == 3 and again.metrics()["mmhal_judge_cache_hits"] == 3
    assert score_mmhal(rated)["score"] == pytest.approx(11 / 3)


# ---- worked examples of the rater's two known leniencies (issue 14) ----------------------------------------------
# Scene A: a large red circle in the top left (0, 0), a small blue square in the middle right (1, 2).
# Scene B (no circle): a small blue square in the top left, a large green triangle in the bottom center.
NO_CIRCLE = Scene("test-000001", "test", (WorldObject("square", "blue", "small", 0, 0),
                                          WorldObject("triangle", "green", "large", 2, 1)))


@pytest.mark.parametrize(("scene", "question", "answer", "rating"), [
    # another cell, true: it does not answer "top left" -> 3 (was 4 "incomplete")
    (SCENE, "What is in the top left of the image?", "There is a small blue square in the middle right.", 3),
    # the cell named before the object: the square belongs to the middle right, not the top left -> 3 (was 2)
    (SCENE, "What is in the top left of the image?", "The middle right holds a small blue square.", 3),
    # another cell, false: a hallucination and no answer -> 0
    (SCENE, "What is in the top left of the image?", "There is a large red circle in the middle right.", 0),
    # an empty cell asked, another (true) cell answered: still no answer -> 3
    (SCENE, "What is in the bottom left of the image?", "There is a small blue square in the middle right.", 3),
    # the right cell: the answer alone is 4 (restating it unplaced is no further statement; was 5), the other
    # cell as well is a further true statement -> 5, an empty cell said empty -> 4
    (SCENE, "What is in the top left of the image?", "A large red circle.", 4),
    (SCENE, "What is in the top left of the image?",
     "A large red circle is in the top left, and a small blue square in the middle right.", 5),
    (SCENE, "What is in the bottom left of the image?", "Nothing, that cell is empty.", 4),
    (SCENE, "What is in the top left of the image?", "A small blue square.", 1),
    # "0 plus 0 circles": no circle in B, so "No" is right; the sum is no further statement -> 4 (was 5)
    (NO_CIRCLE, "Are there more circles than squares?", "No, 0 plus 0 circles.", 4),
    # in A there is a circle: the sum states 0 circles -> hallucination, with an answer -> 1
    (SCENE, "Are there more circles than squares?", "No, 0 plus 0 circles.", 1),
    # wrong arithmetic is a false statement even with the right verdict -> 1 (was 4)
    (NO_CIRCLE, "Are there more circles than squares?", "No, 0 plus 1 is 2.", 1),
    # right arithmetic adds nothing about the image -> 4; a real count does -> 5
    (NO_CIRCLE, "Are there more circles than squares?", "No, 0 plus 1 is 1.", 4),
    (NO_CIRCLE, "Are there more circles than squares?", "No, there are 0 circles and 1 square.", 5),
    (NO_CIRCLE, "How many squares are there?", "There is 1 square, and a green triangle.", 5),
])
def test_oracle_worked_examples(scene: Scene, question: str, answer: str, rating: int) -> None:
    rater = OracleMMHalRater(CONFIG, {scene.scene_id: scene})
    got, why = rater.rate_answer(question, answer, scene)
    assert got == rating, why
