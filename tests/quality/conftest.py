"""Fixtures for the quality gate: a tiny clean world and a copy with one corruption of each kind.

Every corruption goes into ONE world on its own line, so a single GX run (a few seconds) checks them all;
``CORRUPTIONS`` says which file, expectation, column and line each must be reported at.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from silkfire.io import read_records, write_jsonl  # noqa: E402


def make_tiny_world(out_dir: Path) -> Path:
    """A small valid world: the world module's generator when it is importable, else a local stand-in."""
    try:
        from silkfire.world.config import WorldConfig
        from silkfire.world.build import generate_world
    except ImportError:
        return _fallback_world(out_dir)
    generate_world(WorldConfig(train_scenes=4, val_scenes=2, test_scenes=3), out_dir, seed=0, progress=False)
    return out_dir


def _fallback_world(out_dir: Path) -> Path:
    """The data contract in a few lines (used only while silkfire.world is absent)."""
    from PIL import Image

    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    scenes, rows = [], {"train": [], "val": [], "test": []}
    mme = []
    categories = ["existence", "count", "position", "color", "numerical_calculation", "comparison"]
    for split, count in (("train", 4), ("val", 2), ("test", 3)):
        for index in range(count):
            scene_id = f"{split}-{index:06d}"
            image = f"images/{scene_id}.png"
            Image.new("RGB", (64, 64), (255, 255, 255)).save(out_dir / image)
            scenes.append({"scene_id": scene_id, "split": split, "image": image, "width": 64, "height": 64,
                           "objects": [{"shape": "circle", "color": "red", "size": "small", "row": 0, "col": 0}]})
            for category in categories:
                for answer in ("Yes", "No"):
                    question = f"Is it {category}? Please answer yes or no."
                    if split == "test":
                        mme.append({"question_id": f"{category}/{scene_id}", "image": image, "category": category,
                                    "question": question, "answer": answer})
                    else:
                        rows[split].append({"id": f"{scene_id}/mme/{category}/{answer}", "scene_id": scene_id,
                                            "image": image, "family": "mme", "category": category,
                                            "question": question, "answer": answer})
            for n in range(4):
                rows[split].append({"id": f"{scene_id}/open/count/{n}", "scene_id": scene_id, "image": image,
                                    "family": "open", "category": "count", "question": "How many circles?",
                                    "answer": "1"})
    write_jsonl(out_dir / "scenes.jsonl", scenes)
    write_jsonl(out_dir / "train.jsonl", rows["train"])
    write_jsonl(out_dir / "val.jsonl", rows["val"])
    write_jsonl(out_dir / "mme.jsonl", mme)
    write_jsonl(out_dir / "open.jsonl", rows["test"])
    return out_dir


@dataclass(frozen=True)
class Corruption:
    file: str  # which file must fail
    expectation: str  # GX expectation type that must fail
    column: str  # its column
    line: int  # a line that must be reported (filled in by corrupt_world for image cases)
    example: str = ""  # text that must appear in one of the example values


# name -> where it must show up; lines of image cases depend on the world and are resolved in corrupt_world
CORRUPTIONS: dict[str, Corruption] = {
    "truncated_json": Corruption("train.jsonl", "expect_column_values_to_be_in_set", "__json__", 3, "not valid JSON"),
    "missing_key": Corruption("train.jsonl", "expect_column_values_to_be_in_set", "question__type", 5, "missing"),
    "empty_question": Corruption("train.jsonl", "expect_column_values_to_be_in_set", "question__type", 7, "blank"),
    "duplicate_id": Corruption("train.jsonl", "expect_column_values_to_be_unique", "id", 10),
    "test_scene_in_train": Corruption("train.jsonl", "expect_column_values_to_be_in_set", "scene_id__split", 12,
                                      "'test'"),
    "mme_suffix_missing": Corruption("train.jsonl", "expect_column_values_to_match_regex", "question__mme", 11),
    "category_of_other_family": Corruption("train.jsonl", "expect_column_values_to_be_in_set", "category__family", 13,
                                           "celebrity"),
    "unknown_family": Corruption("train.jsonl", "expect_column_values_to_be_in_set", "family", 14, "quiz"),
    "wrong_width": Corruption("scenes.jsonl", "expect_column_values_to_be_between", "width", 1, "32"),
    "no_objects": Corruption("scenes.jsonl", "expect_column_values_to_be_in_set", "objects__status", 3, "no objects"),
    "unknown_mme_category": Corruption("mme.jsonl", "expect_column_values_to_be_in_set", "category", 6, "celebrity"),
    "answer_maybe": Corruption("mme.jsonl", "expect_column_values_to_be_in_set", "answer", 1, "Maybe"),
    "two_yes": Corruption("mme.jsonl", "expect_column_values_to_be_in_set", "answer__pair", 4, "2 x Yes"),
    "two_yes_unique": Corruption("mme.jsonl", "expect_compound_columns_to_be_unique", "question_id,answer", 4),
    "dotdot_path": Corruption("open.jsonl", "expect_column_values_to_be_in_set", "image__status", 1, "'..'"),
    "absolute_path": Corruption("open.jsonl", "expect_column_values_to_be_in_set", "image__status", 2, "absolute"),
    "symlink_out": Corruption("open.jsonl", "expect_column_values_to_be_in_set", "image__status", 3, "symlink"),
    "broken_png": Corruption("scenes.jsonl", "expect_column_values_to_be_in_set", "image__status", 0, "decode"),
    "wrong_size": Corruption("scenes.jsonl", "expect_column_values_to_be_in_set", "image__status", 0, "32x32"),
}


def _line_of(path: Path, key: str, value: str) -> int:
    for number, record in enumerate(read_records(path), start=1):
        if record.get(key) == value:
            return number
    raise AssertionError(f"{value!r} not in {path}")


def corrupt_world(world: Path, outside: Path) -> dict[str, Corruption]:
    """Apply every corruption of CORRUPTIONS to ``world`` (a copy); return them with resolved lines."""
    from PIL import Image

    cases = dict(CORRUPTIONS)
    train = read_records(world / "train.jsonl")
    del train[5 - 1]["question"]
    train[7 - 1]["question"] = ""
    train[10 - 1]["id"] = train[9 - 1]["id"]
    train[12 - 1]["scene_id"] = "test-000000"
    assert train[11 - 1]["family"] == "mme" and train[13 - 1]["family"] != "mme"
    train[11 - 1]["question"] = train[11 - 1]["question"].replace(" Please answer yes or no.", "")
    train[13 - 1]["category"] = "celebrity"
    train[14 - 1]["family"] = "quiz"
    lines = [json.dumps(record) for record in train]
    lines[3 - 1] = lines[3 - 1][: len(lines[3 - 1]) // 2]  # a write cut short
    (world / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    mme = read_records(world / "mme.jsonl")
    assert mme[0]["question_id"] == mme[1]["question_id"] and mme[2]["question_id"] == mme[3]["question_id"]
    mme[1 - 1]["answer"] = "Maybe"
    mme[4 - 1]["answer"] = mme[3 - 1]["answer"] = "Yes"
    mme[6 - 1]["category"] = "celebrity"
    write_jsonl(world / "mme.jsonl", mme)

    outside.mkdir(parents=True, exist_ok=True)
    escaped = outside / "outside.png"
    Image.new("RGB", (64, 64)).save(escaped)
    shutil.copy(escaped, world.parent / "outside.png")  # what "../outside.png" resolves to: a good image
    (world / "images" / "evil.png").symlink_to(escaped)
    open_records = read_records(world / "open.jsonl")
    open_records[1 - 1]["image"] = "../outside.png"
    open_records[2 - 1]["image"] = str((world / open_records[2 - 1]["image"]).resolve())
    open_records[3 - 1]["image"] = "images/evil.png"
    write_jsonl(world / "open.jsonl", open_records)

    broken = world / "images" / "test-000001.png"
    broken.write_bytes(broken.read_bytes()[:200])
    Image.new("RGB", (32, 32)).save(world / "images" / "train-000001.png")
    scenes = world / "scenes.jsonl"
    scene_records = read_records(scenes)
    scene_records[1 - 1]["width"] = 32
    scene_records[3 - 1]["objects"] = []
    write_jsonl(scenes, scene_records)
    for case, scene_id in (("broken_png", "test-000001"), ("wrong_size", "train-000001")):
        cases[case] = dataclasses.replace(cases[case], line=_line_of(scenes, "scene_id", scene_id))

    (world / "val.jsonl").unlink()  # a missing file is a failure too
    return cases


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_world(tmp_path_factory.mktemp("clean") / "world")


@pytest.fixture(scope="session")
def corrupted(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Corruption]]:
    root = tmp_path_factory.mktemp("corrupt")
    world = root / "world"
    shutil.copytree(tiny_world, world)
    return world, corrupt_world(world, tmp_path_factory.mktemp("outside"))


@pytest.fixture(scope="session")
def quality_config() -> Any:
    from silkfire.quality.config import QualityConfig

    return QualityConfig(workers=2)


# ---- the bad-input corpus (tests/quality/corpus) --------------------------------------------------------------
CORPUS = Path(__file__).resolve().parent / "corpus"


def materialise_corpus(root: Path) -> Path:
    """Copy the corpus to ``root/data`` and create the images its records name (kept out of git):
    good 8x8 PNGs, a broken PNG of a few bytes, an image outside the root and a symlink pointing at it."""
    from PIL import Image

    data = root / "data"
    shutil.copytree(CORPUS, data)
    good = [data / "images" / "ok.png", data / "coco" / "images" / "2.png"]
    good += [data / "mathvista" / "images" / f"{i}.png" for i in range(1, 17)]
    for path in good:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (200, 30, 30)).save(path)
    (data / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")  # a PNG header and nothing else
    outside = root / "outside.png"
    Image.new("RGB", (8, 8)).save(outside)  # what "../outside.png" resolves to: a good image, but outside
    (data / "images" / "link.png").symlink_to(outside)
    return data  # the image root of every corpus file


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return materialise_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def corpus_config() -> Any:
    """Small bounds so the corpus stays small: 64 tokens at most, drift checked from 1 value on, no HTML."""
    from silkfire.quality.config import QualityConfig

    return QualityConfig.from_mapping({"workers": 2, "max_tokens": 64, "processes": 1, "drift": {"min_rows": 1},
                                       "data_docs": False})  # Data Docs: tested by the world and CLI tests
