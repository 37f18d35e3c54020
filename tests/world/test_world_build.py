"""generate_world: determinism, split hygiene, images, manifest, and the world's text inventory."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from silkfire.world import WorldConfig, generate_world, world_texts

SMALL = {"train_scenes": 150, "val_scenes": 20, "test_scenes": 30}
FILES = ("scenes.jsonl", "train.jsonl", "val.jsonl", "mme.jsonl", "open.jsonl", "manifest.json")


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def default_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, float]:
    out = tmp_path_factory.mktemp("default")
    start = time.perf_counter()
    counts = generate_world(WorldConfig(), out, seed=0, progress=False)
    return out, counts, time.perf_counter() - start


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    config = WorldConfig.from_mapping(SMALL)
    generate_world(config, tmp_path / "a", seed=5, progress=False)
    generate_world(config, tmp_path / "b", seed=5, progress=False)
    generate_world(config, tmp_path / "c", seed=6, progress=False)
    a, b, c = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert set(FILES) <= set(a)
    assert a == b
    assert a.keys() == c.keys()
    for name in ("scenes.jsonl", "train.jsonl", "mme.jsonl", "images/test-000000.png"):
        assert a[name] != c[name], name


def test_held_out_scenes_do_not_change_with_train_size(tmp_path: Path) -> None:
    generate_world(WorldConfig.from_mapping(SMALL), tmp_path / "a", seed=1, progress=False)
    generate_world(WorldConfig.from_mapping({**SMALL, "train_scenes": 40}), tmp_path / "b", seed=1, progress=False)
    assert (tmp_path / "a" / "mme.jsonl").read_bytes() == (tmp_path / "b" / "mme.jsonl").read_bytes()


def test_stale_images_are_removed(tmp_path: Path) -> None:
    generate_world(WorldConfig.from_mapping(SMALL), tmp_path, seed=0, progress=False)
    generate_world(WorldConfig.from_mapping({**SMALL, "train_scenes": 10}), tmp_path, seed=0, progress=False)
    assert len(list((tmp_path / "images").glob("*.png"))) == 10 + 20 + 30


def _signature(scene: dict) -> tuple:
    return tuple(sorted((o["shape"], o["color"], o["size"], o["row"], o["col"]) for o in scene["objects"]))


def test_held_out_scenes_never_overlap_training(default_world) -> None:
    out, _, _ = default_world
    by_split: dict[str, list[tuple]] = {"train": [], "val": [], "test": []}
    for scene in _read(out / "scenes.jsonl"):
        by_split[scene["split"]].append(_signature(scene))
    train, val, test = (set(by_split[s]) for s in ("train", "val", "test"))
    assert not train & val and not train & test and not val & test
    assert len(val) == len(by_split["val"]) and len(test) == len(by_split["test"])  # no repeats held out
    # single-object scenes are few (216); they still reach the held-out sets
    assert any(len(s) == 1 for s in test)


def test_scene_records_and_images(default_world) -> None:
    out, _, _ = default_world
    config = WorldConfig()
    scenes = _read(out / "scenes.jsonl")
    assert [s["scene_id"] for s in scenes[:2]] == ["train-000000", "train-000001"]
    # every allowed number of objects occurs, and no other
    assert {len(s["objects"]) for s in scenes} == set(range(config.min_objects, config.max_objects + 1))
    for scene in scenes[::7]:  # a sample keeps the test fast; the mapping below is exhaustive per image
        assert set(scene) == {"scene_id", "split", "image", "width", "height", "objects"}
        assert scene["image"] == f"images/{scene['scene_id']}.png"
        assert config.min_objects <= len(scene["objects"]) <= config.max_objects
        cells = [(o["row"], o["col"]) for o in scene["objects"]]
        assert len(set(cells)) == len(cells)
        with Image.open(out / scene["image"]) as image:
            assert image.format == "PNG" and image.mode == "RGB"
            assert image.size == (config.image_size, config.image_size)
            pixels = image.load()
            for o in scene["objects"]:
                x = int((o["col"] + 0.5) * config.image_size / 3)
                y = int((o["row"] + 0.5) * config.image_size / 3)
                assert pixels[x, y] == config.rgb(o["color"]), (scene["scene_id"], o)
            # empty cells show the background at their centre
            for row in range(3):
                for col in range(3):
                    if (row, col) not in cells:
                        centre = (int((col + 0.5) * config.image_size / 3), int((row + 0.5) * config.image_size / 3))
                        assert pixels[centre] == (255, 255, 255)


def test_large_shapes_cover_more_pixels_than_small(default_world) -> None:
    out, _, _ = default_world
    area: dict[tuple[str, str], list[int]] = {}
    for scene in _read(out / "scenes.jsonl")[:200]:
        if len(scene["objects"]) != 1:
            continue
        o = scene["objects"][0]
        with Image.open(out / scene["image"]) as image:
            painted = int((np.asarray(image) != 255).any(axis=2).sum())
        area.setdefault((o["shape"], o["size"]), []).append(painted)
    for shape in ("circle", "square", "triangle"):
        assert min(area[(shape, "large")]) > 2 * max(area[(shape, "small")]), shape


def test_manifest_counts_match_the_files(default_world) -> None:
    out, counts, _ = default_world
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["seed"] == 0
    assert WorldConfig.from_mapping(manifest["config"]) == WorldConfig()
    assert manifest["category_groups"] == {
        "existence": "perception",
        "count": "perception",
        "position": "perception",
        "color": "perception",
        "numerical_calculation": "cognition",
        "comparison": "cognition",
    }
    assert manifest["counts"] == json.loads(json.dumps(counts))
    assert counts["scenes"] == {"train": 2000, "val": 100, "test": 120}
    for split, name in (("train", "train.jsonl"), ("val", "val.jsonl")):
        records = _read(out / name)
        tally = Counter((r["family"], r["category"]) for r in records)
        expected = {(f, c): n for f, cats in counts["records"][split].items() for c, n in cats.items()}
        assert dict(tally) == expected
        assert len({r["id"] for r in records}) == len(records)  # ids unique
    mme = _read(out / "mme.jsonl")
    assert Counter(r["category"] for r in mme) == counts["records"]["test"]["mme"]
    open_records = _read(out / "open.jsonl")
    assert {r["family"] for r in open_records} == {"open", "probe"}
    assert counts["files"]["mme.jsonl"] == len(mme) == 12 * 120
    assert counts["files"]["images"] == 2220


def test_default_generation_is_fast(default_world) -> None:
    _, counts, seconds = default_world
    total = sum(v for k, v in counts["files"].items() if k.endswith(".jsonl"))
    assert total > 20000
    assert seconds < 15, f"default world took {seconds:.1f}s"


def test_world_texts_cover_every_generated_text(default_world) -> None:
    out, _, _ = default_world
    texts = list(world_texts(WorldConfig()))
    assert len(texts) == len(set(texts))
    assert list(world_texts(WorldConfig())) == texts  # deterministic order
    inventory = set(texts)
    words = {w for text in texts for w in text.replace(".", " ").replace(",", " ").split()}
    for name in ("train.jsonl", "val.jsonl", "open.jsonl", "mme.jsonl"):
        for record in _read(out / name):
            assert record["question"] in inventory, record["question"]
            if record.get("category") == "describe":
                used = set(record["answer"].replace(".", " ").replace(",", " ").split())
                assert used <= words
            else:
                assert record["answer"] in inventory, record["answer"]
