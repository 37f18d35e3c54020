"""Policy "filter" (quarantine + clean file, rows in = rows out + rows quarantined) and drift against the previous
data version, on the corpus and on the world."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from silkfire.io import read_records, write_jsonl
from silkfire.quality.cli import validate
from silkfire.quality.config import QualityConfig
from silkfire.quality.report import GateResult


def _filter(config: QualityConfig, kind: str, fraction: float = 1.0) -> QualityConfig:
    section = dataclasses.replace(config.section(kind), policy="filter")
    return dataclasses.replace(config, max_quarantine_fraction=fraction, **{kind: section})


def _quarantine(result: GateResult) -> list[dict[str, Any]]:
    path = result.report_dir / "quarantine.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _counts_hold(result: GateResult) -> None:
    summary = result.summary()
    assert summary["rows_in"] == summary["rows_out"] + summary["rows_quarantined"]
    for table in result.data_tables:
        assert table.rows == table.rows_kept + table.rows_quarantined


@pytest.fixture(scope="module")
def fire_filtered(corpus: Path, corpus_config: QualityConfig, tmp_path_factory) -> GateResult:
    return validate("fire", corpus / "fire" / "bad.jsonl", _filter(corpus_config, "fire"),
                    tmp_path_factory.mktemp("fire_filter"), corpus)


def test_filter_quarantines_bad_rows_and_keeps_the_rest(fire_filtered: GateResult, corpus: Path,
                                                        corpus_config: QualityConfig, tmp_path: Path) -> None:
    result = fire_filtered
    assert result.success, result.to_text()  # every FIRE failure is row-level: dropping the rows fixes it
    summary = result.summary()
    assert summary["policy"] == "filter"
    assert (summary["rows_in"], summary["rows_out"], summary["rows_quarantined"]) == (16, 1, 15)
    _counts_hold(result)
    entries = _quarantine(result)
    assert sorted(entry["line"] for entry in entries) == list(range(1, 16))
    by_line = {entry["line"]: entry for entry in entries}
    leak = by_line[6]["failures"]
    assert [f["column"] for f in leak] == ["feedback__leak"] and "'7'" in leak[0]["value"]
    assert by_line[6]["record"]["groundtruth"]["value"] == "7"  # the original record travels with its reasons
    table = result.tables[0]
    assert table.clean_path == result.report_dir / "clean" / "bad.jsonl"
    clean = table.clean_path.read_text(encoding="utf-8").splitlines()
    original = (corpus / "fire" / "bad.jsonl").read_text(encoding="utf-8").splitlines()
    assert clean == [original[15]]  # line 16, byte for byte
    assert "quarantined" in table.verdict and "Quarantine:" in result.to_text()
    # the clean file passes the gate under policy fail
    again = validate("fire", table.clean_path, corpus_config, tmp_path / "again", corpus)
    assert again.success, again.to_text()


def test_filter_refuses_when_too_many_rows_are_bad(corpus: Path, corpus_config: QualityConfig,
                                                   tmp_path: Path) -> None:
    result = validate("pairs", corpus / "pairs" / "bad.jsonl", _filter(corpus_config, "pairs", 0.05), tmp_path, corpus)
    assert not result.success
    assert "more than max_quarantine_fraction" in result.tables[0].verdict
    _counts_hold(result)  # the counts hold whatever the verdict
    assert result.summary()["rows_quarantined"] == 10 and "policy: filter" in result.to_text()


def test_filter_refuses_what_dropping_rows_cannot_fix(corpus: Path, corpus_config: QualityConfig,
                                                      tmp_path: Path) -> None:
    result = validate("mmhal", corpus / "mmhal" / "bad.jsonl", _filter(corpus_config, "mmhal"), tmp_path, corpus)
    assert not result.success  # the interleaving of types breaks when items are dropped
    assert "cannot fix" in result.tables[0].verdict and "question_type__order" in result.tables[0].verdict
    truncated = validate("fire", corpus / "fire" / "truncated.json", _filter(corpus_config, "fire"),
                         tmp_path / "truncated", corpus)
    assert not truncated.success and truncated.summary()["rows_in"] == 0


def test_filter_drops_a_yes_no_pair_together(corpus: Path, corpus_config: QualityConfig, tmp_path: Path) -> None:
    result = validate("mme", corpus / "mme" / "bad.jsonl", _filter(corpus_config, "mme"), tmp_path, corpus)
    assert result.success, result.to_text()
    _counts_hold(result)
    entries = {entry["line"]: entry for entry in _quarantine(result)}
    # line 13 names a missing image: its partner, line 12, goes with it
    assert [f["expectation"] for f in entries[12]["failures"]] == ["group_is_complete"]
    assert entries[12]["failures"][0]["value"] == "q7"
    assert set(entries) == {3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}  # q6 (lines 10, 11) also goes as a pair
    again = validate("mme", result.tables[0].clean_path, corpus_config, tmp_path / "again", corpus)
    assert again.success and again.summary()["rows_in"] == 2


def test_filter_on_a_json_list_writes_a_json_list(corpus: Path, corpus_config: QualityConfig, tmp_path: Path) -> None:
    records = json.loads((corpus / "fire" / "good.json").read_text(encoding="utf-8"))
    records[1]["round"] = 5
    source = tmp_path / "fire.json"
    source.write_text(json.dumps(records), encoding="utf-8")
    shutil.copytree(corpus / "mathvista", tmp_path / "mathvista")
    shutil.copytree(corpus / "coco", tmp_path / "coco")
    result = validate("fire", source, _filter(corpus_config, "fire"), tmp_path / "report")
    assert result.success and result.tables[0].line_label == "record"
    kept = json.loads(result.tables[0].clean_path.read_text(encoding="utf-8"))
    assert kept == [records[0], records[2]]
    (entry,) = _quarantine(result)
    assert entry["line"] == 2 and entry["line_label"] == "record" and entry["record"]["round"] == 5


def test_world_filter_quarantines_a_broken_line(tiny_world: Path, quality_config: QualityConfig,
                                                tmp_path: Path) -> None:
    from silkfire.quality.world import validate_world

    world = tmp_path / "world"
    shutil.copytree(tiny_world, world)
    lines = (world / "train.jsonl").read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2][:40]  # a write cut short
    (world / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = dataclasses.replace(_filter(quality_config, "world"), data_docs=False)
    result = validate_world(world, config, tmp_path / "report")
    assert result.success, result.to_text()
    _counts_hold(result)
    (entry,) = _quarantine(result)
    assert (entry["table"], entry["line"], entry["raw"]) == ("world.train", 3, lines[2])
    assert entry["failures"][0]["column"] == "__json__"
    train = next(table for table in result.tables if table.name == "world.train")
    assert len(train.clean_path.read_text(encoding="utf-8").splitlines()) == len(lines) - 1
    assert result.summary()["rows_quarantined"] == 1


# ---- drift ----------------------------------------------------------------------------------------------------
def test_drift_against_the_previous_version(corpus: Path, corpus_config: QualityConfig, tmp_path: Path) -> None:
    good = corpus / "vlfeedback" / "good.jsonl"
    first = validate("vlfeedback", good, corpus_config, tmp_path / "v1", corpus)
    assert first.success and "no previous profile" in first.stats["drift"]  # a first run passes
    profile = json.loads((tmp_path / "v1" / "profile.json").read_text(encoding="utf-8"))
    helpfulness = profile["metrics"]["vlfeedback.rating.Helpfulness"]
    assert helpfulness == {"total": 12, "counts": {"2": 3, "3": 3, "4": 3, "5": 3}}

    same = validate("vlfeedback", good, corpus_config, tmp_path / "v2", corpus,
                    previous_profile=tmp_path / "v1" / "profile.json")
    assert same.success and same.stats["drift"]["vlfeedback.rating.Helpfulness"]["tvd"] == 0.0

    records = read_records(good)
    for record in records:  # the judge went lenient: every rating becomes "5"
        completions = record["completions"]
        notes = completions["annotations"] if isinstance(completions, dict) else [c["annotations"] for c in completions]
        for note in notes:
            for aspect in note.values():
                aspect["Rating"] = "5"
    drifted = tmp_path / "drifted.jsonl"
    write_jsonl(drifted, records)
    result = validate("vlfeedback", drifted, corpus_config, tmp_path / "v3", corpus,
                      previous_profile=tmp_path / "v2" / "profile.json")
    assert not result.success
    drift = next(table for table in result.tables if table.role == "drift")
    assert drift.name == "vlfeedback.drift" and drift.source == tmp_path / "v2" / "profile.json"
    (failure,) = drift.failures
    assert failure.lines == (1, 2, 3) and not failure.filterable
    assert "TVD 0.750 > tolerance 0.100" in str(dict(failure.examples)[1])
    summary = result.summary()
    assert summary["drift.vlfeedback.rating.helpfulness"] == 0.75
    assert summary["rows_in"] == 3  # metrics are not rows
    assert "vlfeedback.rating.Helpfulness: TVD 0.750" in result.to_text()

    tolerant = dataclasses.replace(corpus_config, drift=dataclasses.replace(corpus_config.drift, max_tvd=0.8))
    assert validate("vlfeedback", drifted, tolerant, tmp_path / "v4", corpus,
                    previous_profile=tmp_path / "v2" / "profile.json").success


def test_profile_pools_rare_categories_and_compares_them() -> None:
    from collections import Counter

    from silkfire.quality.config import DriftConfig
    from silkfire.quality.profile import build_profile, compare, tvd

    config = DriftConfig(top_k=2, min_rows=0)
    old = build_profile("g", {"g.answer": Counter({"a": 50, "b": 30, "c": 15, "d": 5})}, config)
    assert old["metrics"]["g.answer"]["counts"] == {"a": 50, "b": 30, "<other>": 20}
    new = build_profile("g", {"g.answer": Counter({"a": 50, "b": 30, "e": 20})}, config)
    assert compare(new, old, config)["g.answer"]["tvd"] == 0.0  # c, d and e are all "<other>"
    assert tvd({"Yes": 73, "No": 27}, {"Yes": 50, "No": 50}) == pytest.approx(0.23)
    small = compare(new, old, DriftConfig(min_rows=1000))["g.answer"]
    assert small["status"] == "ok" and "not checked" in small["text"]
