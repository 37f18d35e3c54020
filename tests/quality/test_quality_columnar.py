"""The columnar FIRE path (Arrow + a vectorised screen, silkfire.quality.columnar) finds exactly what the per-record
path finds: the same frame (every column, every line), the same profile counts, the same failures and the same
quarantine, on a file with planted faults of every kind spread over blocks that Arrow reads and blocks it declines."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from silkfire.quality import kinds
from silkfire.quality.columnar import Columnar, physical_lines, read_block
from silkfire.quality.config import QualityConfig
from silkfire.quality.fire import ARROW_SCHEMA, SPEC, screen_fire

CORPUS = Path(__file__).parent / "corpus" / "fire"
PER_RECORD = dataclasses.replace(SPEC, columnar=None)


def dialogue(index: int, answer: str = "42", said: str = "17", feedback: str = "look again at the bars") -> dict:
    return {
        "image": f"coco/{index:05d}.jpg",
        "question": {"role": "user", "value": f"How many bars are in chart {index}?"},
        "conversations": [
            {"role": "student", "type": "response", "value": f"Thought: I count.\nAnswer: {said}\n"},
            {"role": "teacher", "type": "feedback", "value": f"Score: 3.\nFeedback: {feedback}\n"},
            {"role": "student", "type": "response", "value": f"Thought: again.\nAnswer: {answer}\n"},
            {"role": "teacher", "type": "feedback", "value": "Score: 10.\nFeedback: well done\n"},
        ],
        "groundtruth": {"role": "user", "value": answer},
        "source": "coco",
        "round": 2,
        "score": [3, 10],
    }


def line(record: dict) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode() + b"\n"


def planted() -> list[bytes]:
    """One line per fault the screen must hand to the per-record rules (or Arrow must decline), and lines that
    look suspicious but pass."""
    out: list[bytes] = []

    def changed(index: int, **fields: Any) -> bytes:
        return line({**dialogue(index), **fields})

    def turns(index: int, position: int, **fields: Any) -> bytes:
        record = dialogue(index)
        record["conversations"][position] = {**record["conversations"][position], **fields}
        return line(record)

    out += [turns(1, 0, role="teacher"), turns(2, 1, type="response"), turns(3, 1, value="   "),
            turns(4, 3, value="Score: 12.\nFeedback: fine\n"), turns(5, 3, value="Feedback: no score\n"),
            turns(6, 3, value="Score: 5/10.\nFeedback: fine\n"),  # parses as 5: stored [3, 10] disagrees
            turns(7, 1, value="Score: about 3.\nFeedback: x\n"),  # not the simple layout, still reads 3
            turns(8, 1, value="Feedback: first\nScore: 3.\n"), turns(9, 1, value="Score: -3.\nFeedback: x\n"),
            turns(10, 1, value="Score:\n3.\nFeedback: x\n")]
    record = dialogue(11)
    record["conversations"] = record["conversations"][:3]
    out += [line(record), changed(12, conversations=[]), changed(13, round=3), changed(14, round=0),
            changed(15, score=[3]), changed(16, score=[3, 10, 1]), changed(17, score=[]),
            changed(18, question={"role": "user", "value": " "}), changed(19, question={"value": "no role"}),
            changed(20, groundtruth={"role": "user"}), changed(21, image="  "), changed(22, source=""),
            changed(23, split="train"), changed(24, img_path="coco/x.jpg"), changed(25, split=" ")]
    for index in (26, 27):  # no key at all
        record = dialogue(index)
        del record["groundtruth" if index == 26 else "round"]
        out.append(line(record))
    out += [line(dialogue(28, feedback="the answer is 42")),  # a leak
            line(dialogue(29, answer="new york", said="new york", feedback="yes, New  York")),  # said first: fine
            line(dialogue(30, answer="new york", feedback="think of new\nyork")),  # a leak across a line break
            line(dialogue(31, answer="Giraffe", feedback="not a GIRAFFE")),  # case-folded leak
            line(dialogue(32, answer="9", feedback="19 or 0.9 or 9.5")),  # no whole number: fine
            line(dialogue(33, answer="ok", feedback="ok ok")),  # too short to check
            line(dialogue(34, answer="Straße", feedback="die STRASSE")),  # casefold beyond ASCII
            line(dialogue(35, feedback="naïve \u00a0 count")),  # non-ASCII text
            changed(36, question={"role": "user", "value": "\u00a0"}),  # blank to str.strip, not ASCII-blank
            turns(37, 0, value="word " * 40),  # long enough to need a token count (max_tokens 32 below)
            changed(38, image=None), changed(39, conversations=[None, None]), changed(40, score=None)]
    out += [b'{"image": "a.jpg", "question": {"role": "user", "value": "q"}\n',  # truncated
            b"[1, 2]\n", b"null\n", b"\n", b"   \n", line(dialogue(41)).rstrip(b"\n") + b"\r\n",
            changed(42, round="2"), changed(43, round=2.0), changed(44, score=[3.0, 10.0]),
            changed(45, split=None), changed(46, human_rating=[1, 2]), changed(47, extra=float("nan")),
            line(dialogue(48)).replace(b'"source"', b'"source": "vg", "source"'),  # a duplicate key
            line(dialogue(49)).replace(b'"coco"', b'"coco\xff"', 1), line(dialogue(50)).rstrip(b"\n") * 2 + b"\n",
            changed(51, conversations={"role": "student"})]
    return out


@pytest.fixture(scope="module")
def fire_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Valid dialogues with the planted lines spread among them, the corpus's bad.jsonl and good.json records too;
    the first line repeats line 100's (image, question)."""
    lines = [line(dialogue(index + 1000)) for index in range(600)]
    lines[0] = lines[99]
    for offset, bad in enumerate(planted() + (CORPUS / "bad.jsonl").read_bytes().splitlines(keepends=True)):
        lines.insert(7 * offset + 3, bad)
    lines += [line(record) for record in json.loads((CORPUS / "good.json").read_text())]
    path = tmp_path_factory.mktemp("columnar") / "fire.jsonl"
    path.write_bytes(b"".join(lines))
    return path


CONFIG = QualityConfig(check_images=False, max_tokens=32, data_docs=False, policy="filter",
                       max_quarantine_fraction=1.0)


def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many blocks: Arrow reads some, declines others, which are halved down to ~2 kB."""
    monkeypatch.setattr(kinds, "COLUMNAR_BLOCK_BYTES", 8000)
    monkeypatch.setattr(kinds, "COLUMNAR_MIN_BYTES", 2000)


def load(spec: kinds.KindSpec, path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, dict, Counter]:
    small_blocks(monkeypatch)
    cpu: Counter[str] = Counter()
    frames, counts, _, error = kinds._load(spec, path, CONFIG.section("fire"), CONFIG, False, cpu)
    assert error is None
    return kinds.concat_frames(frames), counts, cpu


def cells(frame: Any) -> dict[str, list[Any]]:
    def plain(value: Any) -> Any:
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else value

    return {name: [plain(value) for value in frame[name].astype(object).tolist()] for name in frame.columns}


def test_columnar_frame_equals_per_record_frame(fire_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, fast_counts, cpu = load(SPEC, fire_file, monkeypatch)
    slow, slow_counts, _ = load(PER_RECORD, fire_file, monkeypatch)
    assert list(fast.columns) == list(slow.columns)
    assert [str(fast[name].dtype) for name in fast.columns] == [str(slow[name].dtype) for name in slow.columns]
    fast_cells, slow_cells = cells(fast), cells(slow)
    for name in slow.columns:
        assert fast_cells[name] == slow_cells[name], name
    assert fast_counts == slow_counts
    # both ways were taken: most rows proven clean over columns, the planted ones re-derived per record
    assert 0 < cpu["rows_per_record"] < len(fast) / 2


def test_columnar_gate_reports_and_quarantines_the_same(fire_file: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    small_blocks(monkeypatch)
    results = {}
    for name, spec in (("fast", SPEC), ("slow", PER_RECORD)):
        results[name] = kinds.validate_file(spec, fire_file, CONFIG, tmp_path / name)
    fast, slow = results["fast"], results["slow"]
    assert [f.brief() | {"rows": f.unexpected_rows} for _, f in fast.failures] == \
           [f.brief() | {"rows": f.unexpected_rows} for _, f in slow.failures]
    flagged = {row for _, failure in fast.failures for row, _ in failure.unexpected_rows}
    assert len(flagged) > 50  # the planted faults and the corpus's bad lines
    for name in ("quarantine.jsonl", f"clean/{fire_file.name}"):
        assert (tmp_path / "fast" / name).read_bytes() == (tmp_path / "slow" / name).read_bytes()
    assert json.loads((tmp_path / "fast" / "profile.json").read_text()) == \
           json.loads((tmp_path / "slow" / "profile.json").read_text())


COLUMNAR = Columnar(ARROW_SCHEMA, screen_fire, optional=("split", "img_path"), unread=("human_rating",))


@pytest.mark.parametrize("data", [
    b"\xef\xbb\xbf" + line(dialogue(1)),  # a BOM
    line(dialogue(1)) + b"\n" + line(dialogue(2)),  # a blank line
    line(dialogue(1)) + b" \r\n" + line(dialogue(2)),  # a whitespace-only line
    line(dialogue(1)).rstrip(b"\n") + b" " + line(dialogue(2)),  # two objects on one line
    line({**dialogue(1), "x": 1.5}).replace(b"1.5", b"NaN"),  # NaN: Arrow reads it, orjson does not
    line(dialogue(1)).replace(b"coco/", b"coco\xff/"),  # invalid UTF-8
    line({**dialogue(1), "split": None}),  # null and absent are both null to Arrow
    line({**dialogue(1), "human_rating": [1]}),  # a field outside the Arrow schema
    line({**dialogue(1), "round": "2"}),  # a type the schema does not take
])
def test_read_block_declines_what_arrow_would_read_differently(data: bytes) -> None:
    assert read_block(data, COLUMNAR) is None


def test_read_block_reads_one_row_per_line() -> None:
    data = line(dialogue(1)) + line({**dialogue(2), "split": "val", "extra": {"nested": [1, None]}})
    table = read_block(data + line(dialogue(3)).rstrip(b"\n"), COLUMNAR)
    assert isinstance(table, pa.Table) and table.num_rows == 3 == physical_lines(data) + 1
    assert table.column("split").to_pylist() == [None, "val", None]


def test_screen_passes_clean_rows_only() -> None:
    rows = [dialogue(1), {**dialogue(2), "round": 3}, dialogue(3, feedback="it is 42"),
            {**dialogue(4), "score": [3, 9]}]
    table = read_block(b"".join(line(row) for row in rows), COLUMNAR)
    screen = screen_fire(table, CONFIG.fire, QualityConfig())
    assert screen.clean.tolist() == [True, False, False, False]
    assert screen.counts == {"final_score": Counter({"10": 1})}
    assert list(screen.derived["question__value"]) == ["How many bars are in chart 1?"]
    assert np.asarray(screen.types["split"]).tolist() == ["missing"]
    assert screen_fire(table, CONFIG.fire, QualityConfig(min_tokens=2)) is None  # every text needs its count


def test_threads_over_blocks_give_the_same_frame_in_file_order(fire_file: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """quality.processes threads work on consecutive blocks; the merged frame is the one-thread frame."""
    from dataclasses import replace

    small_blocks(monkeypatch)
    frames = {}
    for threads in (1, 2):
        config = replace(CONFIG, processes=threads)
        loaded, counts, _, error = kinds._load(SPEC, fire_file, config.section("fire"), config, False, Counter())
        assert error is None
        frames[threads] = (kinds.concat_frames(loaded), counts)
    assert len(kinds.jsonl_blocks(fire_file, kinds.COLUMNAR_BLOCK_BYTES)) > 4
    assert cells(frames[1][0]) == cells(frames[2][0]) and frames[1][1] == frames[2][1]
    assert frames[2][0][kinds.LINE].is_monotonic_increasing
