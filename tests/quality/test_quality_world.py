"""The world suite end to end: a clean tiny world passes; every corruption is named with its file and line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from silkfire.quality.report import GateFailed, GateResult
from silkfire.quality.world import validate_world


@pytest.fixture(scope="module")
def clean_result(tiny_world: Path, quality_config, tmp_path_factory: pytest.TempPathFactory) -> GateResult:
    return validate_world(tiny_world, quality_config, tmp_path_factory.mktemp("clean_report"))


@pytest.fixture(scope="module")
def bad_result(corrupted, quality_config, tmp_path_factory: pytest.TempPathFactory) -> GateResult:
    world, _ = corrupted
    return validate_world(world, quality_config, tmp_path_factory.mktemp("bad_report"))


def test_clean_world_passes(clean_result: GateResult) -> None:
    assert clean_result.success, clean_result.to_text()
    assert [table.source.name for table in clean_result.tables] == [
        "scenes.jsonl", "train.jsonl", "val.jsonl", "mme.jsonl", "mme_val.jsonl", "open.jsonl"
    ]
    assert all(table.rows > 0 and table.evaluated >= 10 for table in clean_result.tables)
    assert clean_result.stats["images_checked"] >= 9  # every scene image decoded once
    assert clean_result.raise_if_failed() is clean_result
    summary = clean_result.summary()
    assert summary["success"] is True and summary["failed_expectations"] == 0
    assert summary["expectations"] == sum(t.evaluated for t in clean_result.tables) > 50
    assert summary["rows"] == sum(t.rows for t in clean_result.tables)
    report = clean_result.report_dir
    assert json.loads((report / "validation.json").read_text())["success"] is True
    assert "PASSED" in (report / "report.txt").read_text()
    assert clean_result.data_docs_index == report / "data_docs" / "index.html"
    assert clean_result.data_docs_index.is_file()


@pytest.mark.parametrize("case", [
    "truncated_json", "missing_key", "empty_question", "duplicate_id", "test_scene_in_train", "answer_maybe",
    "two_yes", "two_yes_unique", "dotdot_path", "absolute_path", "symlink_out", "broken_png", "wrong_size",
    "mme_suffix_missing", "category_of_other_family", "unknown_family", "wrong_width", "no_objects",
    "unknown_mme_category",
])
def test_corruption_is_reported_at_its_line(bad_result: GateResult, corrupted, case: str) -> None:
    want = corrupted[1][case]  # a conftest.Corruption
    table = next(t for t in bad_result.tables if t.source.name == want.file)
    assert not table.success
    matching = [f for f in table.failures if f.expectation == want.expectation and f.column == want.column]
    assert matching, f"{case}: no failed {want.expectation} on {want.column}; got " + ", ".join(
        f"{f.expectation}({f.column})" for f in table.failures
    )
    failure = matching[0]
    assert want.line in failure.lines, f"{case}: line {want.line} not in {failure.lines}"
    if want.example:
        examples = {line: str(value) for line, value in failure.examples}
        text = examples.get(want.line, " ".join(examples.values()))
        assert want.example in text, f"{case}: {want.example!r} not in {examples}"


def test_corruptions_only_flag_their_lines(bad_result: GateResult) -> None:
    train = next(t for t in bad_result.tables if t.source.name == "train.jsonl")
    by_column = {f.column: f for f in train.failures}
    assert by_column["__json__"].lines == (3,)  # the broken line alone, not every check of it
    assert by_column["question__type"].lines == (5, 7)
    assert by_column["id"].lines == (9, 10)
    mme = next(t for t in bad_result.tables if t.source.name == "mme.jsonl")
    assert {f.column: f.lines for f in mme.failures}["answer__pair"] == (1, 2, 3, 4)


def test_missing_file_fails_without_crashing(bad_result: GateResult) -> None:
    val = next(t for t in bad_result.tables if t.source.name == "val.jsonl")
    assert val.name == "world.val" and not val.success and val.failures[0].expectation == "file_is_readable"
    assert "no such file" in (val.failures[0].error or "")


def test_text_report_names_file_line_field_and_fix(bad_result: GateResult) -> None:
    text = bad_result.to_text()
    assert text.startswith("Data quality gate 'world': FAILED")
    assert "train.jsonl:5" in text and "'question'" in text and "'missing'" in text
    assert "mme.jsonl:1" in text and "'Maybe'" in text
    assert "expect_column_values_to_be_unique" in text
    assert "what to do:" in text
    assert (bad_result.report_dir / "report.txt").read_text().strip() == text.strip()
    with pytest.raises(GateFailed) as raised:
        bad_result.raise_if_failed()
    assert str(raised.value) == text and raised.value.result is bad_result


def test_json_and_markdown(bad_result: GateResult) -> None:
    saved = json.loads((bad_result.report_dir / "validation.json").read_text())
    assert saved == json.loads(json.dumps(bad_result.to_dict()))
    assert saved["success"] is False
    assert saved["summary"]["failed_expectations"] == len(bad_result.failures) >= 19
    mme = next(t for t in saved["tables"] if t["name"] == "world.mme")
    answer = next(f for f in mme["failures"] if f["column"] == "answer")
    assert answer["lines"] == [1] and answer["examples"][0] == {"line": 1, "value": "Maybe"}
    markdown = bad_result.to_markdown()
    assert "**FAILED**" in markdown and "`expect_column_values_to_be_in_set`" in markdown


def test_data_docs_show_the_failing_expectation(bad_result: GateResult) -> None:
    index = bad_result.data_docs_index
    assert index is not None and index.is_file()
    mme = next(t for t in bad_result.tables if t.name == "world.mme")
    assert mme.docs_page is not None and mme.docs_page.is_file()
    relative = mme.docs_page.relative_to(index.parent).as_posix()
    assert relative in index.read_text(encoding="utf-8")  # the index links the failed validation
    page = mme.docs_page.read_text(encoding="utf-8")
    assert "expect_column_values_to_be_in_set" in page and "Maybe" in page
    assert re.search(r"Failed|failed", page)


def test_clean_world_profile_and_counts(clean_result: GateResult) -> None:
    profile = json.loads((clean_result.report_dir / "profile.json").read_text(encoding="utf-8"))
    answers = profile["metrics"]["world.mme.answer"]["counts"]
    assert answers["Yes"] == answers["No"] > 0  # the Yes/No balance the next world version is compared with
    assert profile["metrics"]["world.train.answer.mme"]["total"] > 0
    assert any(metric.startswith("world.open.answer.") for metric in profile["metrics"])
    summary = clean_result.summary()
    assert summary["policy"] == "fail" and summary["rows_in"] == summary["rows_out"] == summary["rows"]
    assert summary["rows_quarantined"] == summary["rows_failing"] == 0
    assert "no previous profile" in clean_result.stats["drift"]


def test_bad_world_counts_failing_rows(bad_result: GateResult) -> None:
    summary = bad_result.summary()
    assert summary["rows_quarantined"] == 0 and summary["rows_out"] == summary["rows_in"]  # policy fail
    assert summary["rows_failing"] >= 15  # distinct rows behind the row-level failures
    rows = bad_result.failure_rows()
    assert len(rows) == len(bad_result.failures)
    missing = next(row for row in rows if row["expectation"] == "file_is_readable")
    assert missing["table"] == "world.val" and "no such file" in missing["example"]


def test_gate_default_image_size_is_the_worlds() -> None:
    """A world generated with defaults passes a gate built with defaults (the two defaults cannot drift apart)."""
    from silkfire.quality.config import QualityConfig
    from silkfire.world.config import WorldConfig

    assert QualityConfig().image_size == WorldConfig().image_size


def test_val_benchmark_holds_val_scenes_only(tiny_world: Path, quality_config,
                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    """mme_val.jsonl is the MME-style benchmark of the val scenes: a test scene's pair in it fails the gate."""
    import json
    import shutil

    world = tmp_path_factory.mktemp("leak") / "world"
    shutil.copytree(tiny_world, world)
    val_lines = (world / "mme_val.jsonl").read_text().splitlines()
    assert val_lines and all("/val-" in json.loads(line)["question_id"] for line in val_lines)
    test_pair = (world / "mme.jsonl").read_text().splitlines()[:2]
    (world / "mme_val.jsonl").write_text("\n".join(val_lines + test_pair) + "\n")
    result = validate_world(world, quality_config, tmp_path_factory.mktemp("leak_report"))
    assert not result.success
    table = next(t for t in result.tables if t.name == "world.mme_val")
    leak = [f for f in table.failures if "val scene" in f.description]
    assert leak and leak[0].lines == (len(val_lines) + 1, len(val_lines) + 2), [f.to_dict() for f in table.failures]
