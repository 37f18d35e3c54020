"""The generic gate pieces: record loading, derived checks, image checks, validate_table, config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from silkfire.quality import derive
from silkfire.quality.config import QualityConfig
from silkfire.quality.gate import Check, Suite, between, expectation_class, in_set, unique, validate_table
from silkfire.quality.frames import JSON, LINE, load_records, records_frame

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


# ---- records ----------------------------------------------------------------------------------------------------
def test_jsonl_keeps_line_numbers_and_survives_broken_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": "x", "n": 1}\n\n{"a": \n[1, 2]\n{"a": " ", "n": true}\n', encoding="utf-8")
    loaded = load_records(path)
    assert loaded.error is None and loaded.lines == (1, 3, 4, 5)  # the blank line 2 is skipped, not renumbered
    assert loaded.json_status[0] == "ok" and "not valid JSON" in loaded.json_status[1]
    assert loaded.json_status[2] == "not a JSON object (list)"
    frame = records_frame(loaded, {"a": "text", "n": "int", "gone": "str"})
    assert frame[LINE].tolist() == [1, 3, 4, 5]
    assert _plain(frame["a__type"]) == ["text", None, None, "blank"]
    assert _plain(frame["n__type"]) == ["int", None, None, "bool"]  # True is not an int here
    assert _plain(frame["gone__type"]) == ["missing", None, None, "missing"]
    assert _plain(frame["n"]) == [1, None, None, None]  # a wrong type is nulled for the value checks


def _plain(column: pd.Series) -> list:
    return [None if pd.isna(value) else value for value in column.tolist()]


def test_json_list_and_unreadable_files(tmp_path: Path) -> None:
    good = tmp_path / "list.json"
    good.write_text(json.dumps([{"a": "x"}, {"a": "y"}]), encoding="utf-8")
    loaded = load_records(good)
    assert loaded.line_label == "record" and loaded.lines == (1, 2) and loaded.error is None
    bad = tmp_path / "bad.json"
    bad.write_text('[{"a": "x"},\n {"a": ]', encoding="utf-8")
    assert "bad.json:2" in (load_records(bad).error or "")  # silkfire.io's RecordFileError, file:line
    assert "no such file" in (load_records(tmp_path / "absent.jsonl").error or "")


# ---- derived checks ---------------------------------------------------------------------------------------------
def test_group_composition_and_sizes() -> None:
    keys = ["q1", "q1", "q2", "q2", "q3", None]
    answers = ["Yes", "No", "Yes", "Yes", "No", "Yes"]
    status = derive.group_composition(keys, answers, {"Yes": 1, "No": 1})
    assert status[:2] == ["ok", "ok"] and status[5] is None
    assert status[2] == "2 x Yes, 0 x No (expected 1 x Yes, 1 x No)"
    assert status[4] == "0 x Yes, 1 x No (expected 1 x Yes, 1 x No)"
    assert derive.group_sizes(keys) == [2, 2, 2, 2, 1, None]


def test_image_checker_rules_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "images" / "ok.png")
    Image.new("L", (8, 8)).save(root / "images" / "gray.png")
    Image.new("RGB", (4, 8)).save(root / "images" / "small.png")
    (root / "images" / "junk.png").write_bytes(b"\x89PNG not really")
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    (root / "images" / "link.png").symlink_to(tmp_path / "outside.png")
    (root / "images" / "inner.png").symlink_to(root / "images" / "ok.png")  # a symlink inside the root is fine
    os.mkfifo(root / "images" / "pipe.png")  # reading it would block forever
    Image.new("RGB", (300, 200)).save(root / "images" / "big.png")
    checker = derive.ImageChecker(root, size=(8, 8), mode="RGB", workers=2)
    checked: list[str] = []
    real_check = checker._check
    monkeypatch.setattr(checker, "_check", lambda path: checked.append(path) or real_check(path))
    monkeypatch.setenv("SILKFIRE_MAX_IMAGE_PIXELS", "50000")
    paths = ["images/ok.png"] * 12 + [
        "images/gray.png", "images/small.png", "images/junk.png", "images/none.png", "../outside.png",
        str(root / "images" / "ok.png"), "images/link.png", "images/inner.png", "images/../images/ok.png", None,
        "images/ok.png\x00.txt", "images/pipe.png", "images/big.png",
    ]
    status = checker.statuses(paths)
    assert status[:12] == ["ok"] * 12
    assert status[12:] == [
        "mode L, expected RGB",
        "size 4x8, expected 8x8",
        status[14],
        "file not found",
        "path escapes the data root through '..'",
        "absolute path (image paths must be relative to the data root)",
        "symlink points outside the data root",
        "ok",
        "ok",
        None,
        "NUL byte in path",
        "not a file",
        status[24],
    ]
    assert status[14].startswith("cannot decode image")
    assert status[24].startswith("image too large: 300x200 = 60000 pixels (limit 50000")
    assert sorted(checked) == sorted({path for path in paths if path is not None})  # once per distinct path
    checker.statuses(["images/ok.png"])
    assert checked.count("images/ok.png") == 1  # cached


# ---- validate_table ---------------------------------------------------------------------------------------------
def test_validate_table_maps_rows_to_lines(tmp_path: Path) -> None:
    frame = pd.DataFrame({LINE: [2, 4, 7], JSON: ["ok", "ok", "ok"], "id": ["a", "b", "b"], "n": [1, 50, 3]},
                         index=[10, 11, 12])  # a non-default index must not matter
    suite = Suite("demo.table", (
        unique("id", "ids are unique", "rename one"),
        between("n", 0, 10, "n is small", "shrink n"),
        in_set("id", ["a", "b"], "ids are known"),
    ))
    result = validate_table("demo.table", frame, suite, source=tmp_path / "demo.jsonl", docs_dir=tmp_path / "docs",
                            max_examples=2)
    assert not result.success and result.rows == 3 and result.evaluated == 3
    assert [(f.expectation, f.column, f.lines) for f in result.failures] == [
        ("expect_column_values_to_be_unique", "id", (4, 7)),
        ("expect_column_values_to_be_between", "n", (4,)),
    ]
    assert result.failures[1].examples == ((4, 50),) and result.failures[1].hint == "shrink n"
    assert (tmp_path / "docs" / "index.html").is_file() and result.docs_page and result.docs_page.is_file()

    plain = pd.DataFrame({"id": ["a", "a"]})  # no __line__: row position + 1
    again = validate_table("demo.plain", plain, [unique("id", "ids are unique")], source=tmp_path / "p.jsonl",
                           docs_dir=tmp_path / "docs")
    assert again.failures[0].lines == (1, 2)


def test_missing_column_is_a_failure_not_a_crash(tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": ["a"]})
    result = validate_table("demo.missing", frame, [Check("expect_column_values_to_not_be_null", {"column": "nope"},
                                                          "nope is set")],
                            source=tmp_path / "m.jsonl", docs_dir=tmp_path / "docs")
    assert not result.success and result.failures[0].column == "nope"


def test_unknown_expectation_name() -> None:
    assert expectation_class("expect_column_values_to_be_in_set").__name__ == "ExpectColumnValuesToBeInSet"
    with pytest.raises(ValueError, match="unknown Great Expectations expectation"):
        expectation_class("expect_the_moon")


def test_bad_check_arguments_name_the_check(tmp_path: Path) -> None:
    bad = Check("expect_column_values_to_be_between", {"column": "n", "min_value": "low"}, "n is small")
    with pytest.raises(ValueError, match="check 'n is small': bad arguments"):
        validate_table("demo.bad", pd.DataFrame({"n": [1]}), [bad], source=tmp_path / "b.jsonl",
                       docs_dir=tmp_path / "docs")


# ---- config -----------------------------------------------------------------------------------------------------
def test_config_from_composed_yaml_and_errors() -> None:
    from omegaconf import OmegaConf

    # as Hydra composes it: the group under `quality`, next to the world group it interpolates
    quality = OmegaConf.load(CONF_DIR / "quality" / "default.yaml")
    cfg = OmegaConf.create({"world": {"image_size": 48}, "quality": quality})
    config = QualityConfig.from_mapping(cfg.quality)
    assert config.image_size == 48  # follows world.image_size
    assert config == QualityConfig(workers=config.workers, image_size=48)  # the YAML states the defaults
    assert config.world.answers == ("Yes", "No") and "comparison" in config.world.mme_categories
    assert QualityConfig.from_mapping(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown key"):
        QualityConfig.from_mapping({"polcy": "fail"})
    assert QualityConfig.from_mapping({"policy": "filter"}).policy_for("fire") == "filter"
    assert QualityConfig.from_mapping({"fire": {"policy": "filter"}}).policy_for("fire") == "filter"
    assert QualityConfig.from_mapping({"fire": {"policy": "filter"}}).policy_for("mme") == "fail"
    with pytest.raises(ValueError, match="quality.fire.*policy must be one of"):
        QualityConfig.from_mapping({"fire": {"policy": "drop"}})
    with pytest.raises(ValueError, match=r"quality.fire.scores: expected a list of 2"):
        QualityConfig.from_mapping({"fire": {"scores": [0]}})
    with pytest.raises(ValueError, match="quality.vlfeedback: unknown key"):
        QualityConfig.from_mapping({"vlfeedback": {"aspect": []}})
    with pytest.raises(ValueError, match="must be one of"):
        QualityConfig.from_mapping({"policy": "ignore"})
    with pytest.raises(ValueError, match="quote it"):
        QualityConfig.from_mapping({"world": {"answers": [True, False]}})
    with pytest.raises(ValueError, match="world: unknown key"):
        QualityConfig.from_mapping({"world": {"families": {"mme": ["count"]}, "colours": []}})
