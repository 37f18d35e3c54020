"""VLFeedback records (both published layouts) and the pair rule, with hand-computed counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from silkfire.cli import main
from silkfire.vlfeedback.pair_rule import build_pairs, build_pairs_file, completion_score
from silkfire.vlfeedback.records import FeedbackFormatError, read_feedback, write_feedback


def notes(h: str, v: str, e: str) -> dict:
    return {
        "Helpfulness": {"Rating": h, "Rationale": "h"},
        "Visual Faithfulness": {"Rating": v, "Rationale": "v"},
        "Ethical Considerations": {"Rating": e, "Rationale": "e"},
    }


def record(rid: str, ratings: list[tuple[str, str, str]], columnwise: bool = False) -> dict:
    models = [f"m{i}" for i in range(len(ratings))]
    responses = [f"answer {rid} {i}" for i in range(len(ratings))]
    annotations = [notes(*r) for r in ratings]
    if columnwise:
        completions = {"annotations": annotations, "model": models, "response": responses}
    else:
        completions = [{"model": m, "response": r, "annotations": a}
                       for m, r, a in zip(models, responses, annotations)]
    return {"id": rid, "prompt": f"question {rid}?", "models": models, "completions": completions,
            "img_path": f"merged_images/{rid}.jpg"}


# scores: 4, 4, 5, 3 -> pairs (0,1) tie; (0,2) (0,3) (1,2) (1,3) (2,3) -> 5 pairs, 1 tie
R1 = [("4", "4", "4"), ("5", "3", "4"), ("5", "5", "5"), ("3", "3", "3")]
# completion 1 has "N/A": pairs (0,1) (1,2) (1,3) skipped; (0,2): 2 vs 3 ; (0,3) 2 vs 2 tie; (2,3) 3 vs 2
R2 = [("2", "2", "2"), ("N/A", "4", "5"), ("3", "3", "3"), ("1", "2", "3")]


def test_pair_counts_hand_computed() -> None:
    pairs, counts = build_pairs([read_one(record("a", R1)), read_one(record("b", R2))])
    assert counts == {"records": 2, "pairs": 5 + 2, "ties": 1 + 1, "skipped": 3, "below_margin": 0, "over_cap": 0,
                      "duplicates": 0}
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    b = [p for p in pairs if p["source_id"] == "b"]
    assert {(p["chosen_model"], p["rejected_model"]) for p in b} == {("m2", "m0"), ("m2", "m3")}
    assert all("m1" not in (p["chosen_model"], p["rejected_model"]) for p in b)
    first = next(p for p in pairs if p["id"] == "a/2-3")
    assert first["chosen"] == "answer a 2" and first["rejected"] == "answer a 3"
    assert first["chosen_score"] == 5.0 and first["rejected_score"] == 3.0
    assert first["img_path"] == "merged_images/a.jpg" and first["prompt"] == "question a?"


def duplicated() -> dict:
    """Scores 5, 1, 5, 2; completion 2 repeats completion 0's text, completion 3 completion 1's."""
    raw = record("d", [("5", "5", "5"), ("1", "1", "1"), ("5", "5", "5"), ("2", "2", "2")])
    raw["completions"][2]["response"] = raw["completions"][0]["response"]  # two models answered alike
    raw["completions"][3]["response"] = " answer d  1 "  # same text as completion 1, whitespace aside
    return raw


def test_duplicate_texts_are_kept_by_the_silkie_rule() -> None:
    raw = duplicated()
    pairs, counts = build_pairs([read_one(raw), read_one(dict(raw, id="d2"))])
    # run_dpo.py pairs by score only: (0,1) 5>1, (0,3) 5>2, (2,1) 5>1, (3,1) 2>1 -- the same text on both
    # sides, rated 2 and 1 --, (2,3) 5>2; (0,2) ties; d2 repeats the same 5 pairs
    assert [p["id"] for p in pairs] == ["d/0-1", "d/0-3", "d/2-1", "d/3-1", "d/2-3",
                                        "d2/0-1", "d2/0-3", "d2/2-1", "d2/3-1", "d2/2-3"]
    assert counts["ties"] == 2 and counts["duplicates"] == 0 and counts["pairs"] == 10
    same = next(p for p in pairs if p["id"] == "d/3-1")
    assert (same["chosen_score"], same["rejected_score"]) == (2.0, 1.0)
    assert same["chosen"].split() == same["rejected"].split()


def test_duplicate_texts_form_one_pair_by_the_strict_rule() -> None:
    raw = duplicated()
    pairs, counts = build_pairs([read_one(raw), read_one(dict(raw, id="d2"))], rule="strict")
    # record d: (0,1) kept; (0,2) tie; (0,3) (1,2) (2,3) repeat the texts of (0,1); (1,3) same text.
    # record d2 (same image and prompt): 1 tie, its 5 other pairs repeat d's
    assert [p["id"] for p in pairs] == ["d/0-1"]
    assert counts["ties"] == 2 and counts["duplicates"] == 4 + 5 and counts["pairs"] == 1


def test_margin_and_cap() -> None:
    rows = [read_one(record("a", R1))]
    # margins: (0,2)=1 (0,3)=1 (1,2)=1 (1,3)=1 (2,3)=2
    pairs, counts = build_pairs(rows, min_margin=1.0)
    assert [p["id"] for p in pairs] == ["a/2-3"] and counts["below_margin"] == 4 and counts["ties"] == 1
    pairs, counts = build_pairs(rows, max_pairs_per_prompt=2)
    assert [p["id"] for p in pairs] == ["a/2-0", "a/2-3"] and counts["over_cap"] == 3 and counts["pairs"] == 2
    with pytest.raises(ValueError, match="min_margin"):
        build_pairs(rows, min_margin=-1)


def test_score_is_unweighted_mean_and_non_numeric_is_none() -> None:
    for rule in ("silkie", "strict"):
        assert completion_score(notes("5", "4", "3"), rule=rule) == 4.0
        assert completion_score(notes("5", "", "3"), rule=rule) is None
        assert completion_score(notes("five", "4", "3"), rule=rule) is None
        assert completion_score(None, rule=rule) is None
        assert completion_score({}, rule=rule) is None
    # a missing aspect: silkie averages the aspects present (5 + 2) / 2, strict has no score
    two = {"Helpfulness": {"Rating": "5"}, "Visual Faithfulness": {"Rating": "2"}}
    assert completion_score(two) == 3.5 and completion_score(two, rule="strict") is None
    with pytest.raises(ValueError, match=r"rule must be one of \['silkie', 'strict'\], got 'mean'"):
        completion_score(two, rule="mean")


# completion 1 lacks "Ethical Considerations": silkie scores it (4 + 2) / 2 = 3 -> scores 4, 3, 3, 1: pairs
# (0,1) (0,2) (0,3) (1,3) (2,3), tie (1,2); strict leaves it out -> (0,2) (0,3) (2,3), 3 pairs skipped
MISSING = [("4", "4", "4"), ("4", "2", "x"), ("3", "3", "3"), ("1", "1", "1")]


def missing_aspect() -> dict:
    raw = record("m", MISSING)
    del raw["completions"][1]["annotations"]["Ethical Considerations"]
    return raw


def test_a_missing_aspect_is_averaged_by_the_silkie_rule(tmp_path: Path) -> None:
    raw = missing_aspect()
    pairs, counts = build_pairs([raw])
    assert [p["id"] for p in pairs] == ["m/0-1", "m/0-2", "m/0-3", "m/1-3", "m/2-3"]
    assert counts["ties"] == 1 and counts["skipped"] == 0
    assert next(p for p in pairs if p["id"] == "m/1-3")["chosen_score"] == 3.0
    pairs, counts = build_pairs([raw], rule="strict")
    assert [p["id"] for p in pairs] == ["m/0-2", "m/0-3", "m/2-3"] and counts["skipped"] == 3
    # from a file: silkie reads the record, strict refuses it naming file, line and field
    path = tmp_path / "missing.jsonl"
    path.write_text(json.dumps(raw) + "\n")
    assert build_pairs_file(path, tmp_path / "pairs.jsonl")["pairs"] == 5
    with pytest.raises(FeedbackFormatError, match=r"missing.jsonl:1: completions\[1\].annotations: lacks the "
                                                  r"aspect\(s\) \['Ethical Considerations'\]"):
        build_pairs_file(path, tmp_path / "strict.jsonl", rule="strict")
    unannotated = dict(raw, completions=[dict(c) for c in raw["completions"]])
    unannotated["completions"][2].pop("annotations")
    path.write_text(json.dumps(raw) + "\n" + json.dumps(unannotated) + "\n")
    with pytest.raises(FeedbackFormatError, match=r"missing.jsonl: record 1 \(id 'm'\): completions\[2\]"
                                                  r".annotations: missing"):
        build_pairs_file(path, tmp_path / "pairs.jsonl")
    with pytest.raises(ValueError, match="rule must be one of"):
        build_pairs([raw], rule="loose")


def _gate_images(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "merged_images").mkdir(exist_ok=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "merged_images" / "d.jpg")


def _gate(path: Path, rule: str | None, report: Path, image_root: Path):
    from silkfire.quality.config import QualityConfig
    from silkfire.quality.pairs import validate_pairs

    config = QualityConfig.from_mapping({} if rule is None else {"pairs": {"rule": rule}})
    return validate_pairs(path, config, report, image_root=image_root)


def test_the_gate_checks_under_the_rule_that_built_the_pairs(tmp_path: Path) -> None:
    """Silkie output -- repeated (image, prompt, chosen, rejected) from different completion pairs and records,
    equal texts rated differently -- passes the gate under rule silkie and fails the same file under strict
    (the gate's default on its own); strict output passes under both."""
    from silkfire.io import write_jsonl

    _gate_images(tmp_path)
    raw = duplicated()
    for rule in ("silkie", "strict"):
        pairs, _ = build_pairs([read_one(raw), read_one(dict(raw, id="d2"))], rule=rule)
        write_jsonl(tmp_path / f"{rule}.jsonl", pairs)
    silkie = _gate(tmp_path / "silkie.jsonl", "silkie", tmp_path / "r1", tmp_path)
    assert silkie.success, str(silkie)
    assert silkie.summary()["rows_out"] == 10
    for rule in ("strict", None):
        refused = _gate(tmp_path / "silkie.jsonl", rule, tmp_path / f"r2-{rule}", tmp_path)
        assert not refused.success
        text = refused.to_text()
        assert "chosen__differs" in text or "'chosen' differs from 'rejected'" in text, text
        assert "duplicate" in text, text
    for rule in ("silkie", "strict"):
        assert _gate(tmp_path / "strict.jsonl", rule, tmp_path / f"r3-{rule}", tmp_path).success


def test_the_silkie_gate_keeps_every_other_check(tmp_path: Path) -> None:
    """Under silkie the ids stay unique (one per completion pair) and chosen_score > rejected_score holds."""
    from silkfire.io import write_jsonl

    _gate_images(tmp_path)
    pairs, _ = build_pairs([read_one(duplicated())])
    for name, bad in (("repeated_id", [*pairs, pairs[0]]),
                      ("tie", [*pairs[1:], dict(pairs[0], rejected_score=pairs[0]["chosen_score"])]),
                      ("no_image", [*pairs[1:], {k: v for k, v in pairs[0].items() if k != "img_path"}])):
        write_jsonl(tmp_path / f"{name}.jsonl", bad)
        assert not _gate(tmp_path / f"{name}.jsonl", "silkie", tmp_path / name, tmp_path).success, name
    with pytest.raises(ValueError, match="rule must be one of"):
        _gate(tmp_path / "tie.jsonl", "loose", tmp_path / "loose", tmp_path)


def test_validate_cli_takes_the_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from silkfire.io import write_jsonl

    _gate_images(tmp_path)
    pairs, _ = build_pairs([read_one(duplicated())])
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, pairs)
    common = ["validate", "pairs", str(path), "--image-root", str(tmp_path), "--set", "data_docs=false"]
    assert main([*common, "--report-dir", str(tmp_path / "a"), "--rule", "silkie"]) == 0
    assert main([*common, "--report-dir", str(tmp_path / "b"), "--rule", "strict"]) == 1
    assert main([*common, "--report-dir", str(tmp_path / "c")]) == 1  # strict unless told
    assert main([*common, "--report-dir", str(tmp_path / "d"), "--set", "pairs.rule=silkie"]) == 0
    capsys.readouterr()


def read_one(raw: dict) -> dict:
    from silkfire.vlfeedback.records import normalise_record

    return normalise_record(raw)


def test_columnwise_and_list_layouts_read_the_same(tmp_path: Path) -> None:
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("\n".join(json.dumps(record(r, R1, columnwise=r == "b")) for r in "ab") + "\n")
    listed = tmp_path / "rows.json"
    listed.write_text(json.dumps([record("a", R1, columnwise=True), record("b", R1)]))
    rows_a, rows_b = read_feedback(jsonl), read_feedback(listed)
    assert [r["completions"] for r in rows_a] == [r["completions"] for r in rows_b]
    assert rows_a[1]["completions"][2] == {"model": "m2", "response": "answer b 2", "annotations": notes("5", "5", "5")}
    assert list(rows_a[0]) == ["id", "prompt", "models", "completions", "img_path"]
    out = tmp_path / "out.jsonl"
    assert write_feedback(out, rows_a) == 2
    assert read_feedback(out) == rows_a


def test_bad_input_names_file_line_and_field(tmp_path: Path) -> None:
    bad = record("b", R1)
    bad["completions"][2]["annotations"]["Helpfulness"]["Rating"] = ["4"]
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record("a", R1)) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(FeedbackFormatError) as info:
        read_feedback(path)
    message = str(info.value)
    assert f"{path}:3" in message and "completions[2].annotations['Helpfulness'].Rating" in message
    listed = tmp_path / "bad.json"
    columns = record("c", R1, columnwise=True)
    columns["completions"]["response"].pop()
    listed.write_text(json.dumps([record("a", R1), columns]))
    with pytest.raises(FeedbackFormatError, match=r"bad.json: record 1: completions: column-wise lists differ"):
        read_feedback(listed)
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"id": "x", "prompt": "p", "completions": []}) + "\n")
    with pytest.raises(FeedbackFormatError, match=r"missing.jsonl:1: img_path"):
        read_feedback(missing)
    unannotated = tmp_path / "raw.jsonl"
    raw = record("a", R1)
    for c in raw["completions"]:
        c.pop("annotations")
    unannotated.write_text(json.dumps(raw) + "\n")
    assert read_feedback(unannotated)[0]["completions"][0]["annotations"] is None
    with pytest.raises(FeedbackFormatError, match=r"raw.jsonl:1: completions\[0\].annotations: missing"):
        read_feedback(unannotated, require_annotations=True)


def test_pairs_cli_prints_counts_and_passes_the_gate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "feedback.json"
    source.write_text(json.dumps([record("a", R1, columnwise=True), record("b", R2)]))
    out = tmp_path / "pairs.jsonl"
    assert main(["pairs", str(source), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out) == {"records": 2, "pairs": 7, "ties": 2, "skipped": 3}
    assert len(out.read_text().splitlines()) == 7
    assert build_pairs_file(source, tmp_path / "again.jsonl") ["pairs"] == 7
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert main(["pairs", str(bad), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err


def test_pairs_pass_the_quality_gate(tmp_path: Path) -> None:
    from silkfire.quality.config import QualityConfig
    from silkfire.quality.pairs import validate_pairs

    pairs, _ = build_pairs([read_one(record("a", R1)), read_one(record("b", R2))])
    path = tmp_path / "pairs.jsonl"
    from silkfire.io import write_jsonl

    write_jsonl(path, pairs)
    images = tmp_path / "merged_images"
    images.mkdir()
    from PIL import Image

    for rid in "ab":
        Image.new("RGB", (8, 8)).save(images / f"{rid}.jpg")
    result = validate_pairs(path, QualityConfig.from_mapping({}), tmp_path / "report", image_root=tmp_path)
    assert result.success, str(result)
