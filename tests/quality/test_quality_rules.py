"""The record rules one by one (no GX): FIRE scores and leaks, VLFeedback layouts and ratings, token bounds,
duplicates, and the block loader that lets several processes read one large JSONL file."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from silkfire.quality import derive, fire, vlfeedback
from silkfire.quality.config import FireConfig, QualityConfig


@pytest.mark.parametrize(("text", "score"), [
    ("Score: 5.\nFeedback: look again", 5),
    ("Score: 5/10.\nFeedback: close", 5),  # the upstream N/10 form: the first integer, not 10 or 0.5
    ("Score: 10/10.", 10),
    ("Score:7\nFeedback: 3 more", 7),
    ("Thought: x\nScore: 2 out of 10\nFeedback: y", 2),
    ("Score: -1.", -1),  # parsed, then out of range
    ("Score: N/A\nFeedback: 8 bars", None),  # no integer on the Score line (not the 8 below it)
    ("Feedback: no score", None),
])
def test_parse_score(text: str, score: int | None) -> None:
    assert fire.parse_score(text) == score


@pytest.mark.parametrize(("ground_truth", "feedback", "student", "leak"), [
    ("9", "There are 9 bars.", "Answer: 5", True),
    ("9", "Count the 19 dots; 0.9 are hidden, 9.5 on average, -9 below.", "Answer: 5", False),
    ("9", "Yes, 9 is right.", "Answer: 9", False),  # confirming the student's own answer reveals nothing
    ("Giraffe", "It is a GIRAFFE, look at the neck.", "Answer: zebra", True),  # case-folded
    ("giraffe", "Giraffes have long necks.", "Answer: zebra", False),  # a whole word only
    ("red circle", "The red   circle is on the left.", "Answer: blue", True),  # whitespace collapsed
    ("No", "No, look again.", "Answer: yes", False),  # in leak_ignore: too common in prose
    ("ox", "The ox is there.", "Answer: cow", False),  # shorter than leak_min_chars and not a number
    ("3.5", "Not 3.5 but something else.", "Answer: 2", True),
    ("Paris.", "The capital is Paris, not Lyon.", "Answer: Lyon", True),  # trailing "." dropped
])
def test_leak_rule(ground_truth: str, feedback: str, student: str, leak: bool) -> None:
    cfg = FireConfig()
    turns = [{"role": "student", "type": "response", "value": student},
             {"role": "teacher", "type": "feedback", "value": f"Score: 3.\nFeedback: {feedback}\n"}]
    key = fire.leak_key(ground_truth, cfg)
    status = "ok" if key is None else fire.leaks(turns, key)
    assert (status != "ok") is leak, status
    if leak:
        assert status.startswith("turn 2 (teacher): the feedback reveals the ground truth")


def test_feedback_text_leaves_out_the_score_line() -> None:
    # a ground truth equal to the score is no leak: only the Feedback text is searched
    assert fire.feedback_text("Score: 9.\nFeedback: recount") == " recount"
    assert fire.feedback_text("Score: 9.\nrecount") == "\nrecount"
    assert fire.leaks([{"value": "Answer: 4"}, {"value": "Score: 9.\nFeedback: recount"}], ("9", True)) == "ok"


def test_vlfeedback_layouts_and_ratings() -> None:
    rows = [{"model": "a", "response": "r1", "annotations": {}}, {"model": "b", "response": "r2", "annotations": {}}]
    columns = {"model": ["a", "b"], "response": ["r1", "r2"], "annotations": [{}, {}]}
    assert vlfeedback.completions_of(rows) == (rows, "ok")
    assert vlfeedback.completions_of(columns) == (rows, "ok")
    assert "different lengths" in vlfeedback.completions_of({**columns, "model": ["a"]})[1]
    assert "lack the list(s) ['annotations']" in vlfeedback.completions_of({"model": [], "response": []})[1]
    assert [vlfeedback.parse_rating(v, 1, 5) for v in ("4", " 5 ", "N/A", "6", "", "0", "4.5", 4, None)] == [
        4, 5, None, None, None, None, None, None, None]


def test_token_bounds_count_only_when_in_doubt() -> None:
    # 2048 tokens cannot fit in fewer than 4095 characters: no split needed
    assert derive.token_count("word " * 100, 1, 2048) is None
    assert derive.token_count("a " * 3000, 1, 2048) == 3000
    assert derive.token_count("one two", 3, 10) == 2  # a lower bound above 1 always counts
    assert derive.token_counts(["x", None, 5], 1, 1) == [None, None, None]


def test_duplicate_status_compares_values_after_hashing() -> None:
    frame = pd.DataFrame({"__line__": [1, 2, 3, 4, 5], "image": ["a", "a", "b", None, "a"],
                          "prompt": ["p", "q", "p", "p", "p"]})
    assert derive.duplicate_status(frame, ["image", "prompt"]) == [
        "duplicate of line(s) 5", "ok", "ok", None, "duplicate of line(s) 1"]


def test_text_status() -> None:
    assert [derive.text_status(v) for v in ("x", " ", None, 3)] == ["ok", "blank", "missing", "not a string (int)"]


# ---- block loading (several processes on one large file) ------------------------------------------------------
def _fire_lines(count: int) -> list[str]:
    records = json.loads((Path(__file__).parent / "corpus" / "fire" / "good.json").read_text(encoding="utf-8"))
    lines = []
    for index in range(count):
        record = dict(records[index % len(records)], image=f"img/{index}.png")
        lines.append(json.dumps(record))
    lines[7] = lines[7][:50]  # a broken line
    lines[12] = ""  # a blank line (skipped, but it still counts for the line numbers)
    return lines


def test_blocks_renumber_to_file_lines(tmp_path: Path) -> None:
    from silkfire.quality.kinds import _load_block
    from silkfire.quality.frames import iter_record_chunks, jsonl_blocks

    path = tmp_path / "fire.jsonl"
    path.write_text("\n".join(_fire_lines(40)) + "\n", encoding="utf-8")
    blocks = jsonl_blocks(path, 2000)
    assert len(blocks) > 3 and blocks[0][0] == 0 and blocks[-1][1] == path.stat().st_size
    config = QualityConfig(processes=1)
    lines, offset = [], 0
    for start, end in blocks:  # what the worker processes return, renumbered as _load_parallel does
        frame, _, seen, cpu = _load_block(("fire", str(path), start, end, config))
        assert set(cpu) == {"parse_cpu_s", "schema_cpu_s", "rules_cpu_s"}
        lines += (frame["__line__"] + offset).tolist()
        offset += seen
    (whole,) = list(iter_record_chunks(path, 10_000))
    assert lines == list(whole.lines) and 13 not in lines and len(lines) == 39


@pytest.mark.slow  # spawns two worker processes (~10 s on 2 busy cores); the renumbering is tested above
def test_parallel_loading_gives_the_same_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from silkfire.quality import kinds
    from silkfire.quality.fire import validate_fire

    path = tmp_path / "fire.jsonl"
    path.write_text("\n".join(_fire_lines(60)) + "\n", encoding="utf-8")
    config = QualityConfig.from_mapping({"check_images": False, "data_docs": False, "processes": 1})
    single = validate_fire(path, config, tmp_path / "one")
    monkeypatch.setattr(kinds, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(kinds, "BLOCK_BYTES", 3000)
    parallel = validate_fire(path, QualityConfig.from_mapping({**config.to_dict(), "processes": 2}), tmp_path / "two")
    assert [(f.column, f.lines) for _, f in single.failures] == [(f.column, f.lines) for _, f in parallel.failures]
    assert ("__json__", (8,)) in [(f.column, f.lines) for _, f in parallel.failures]
    assert single.summary()["rows_in"] == parallel.summary()["rows_in"] == 59
