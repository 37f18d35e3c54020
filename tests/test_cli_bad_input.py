"""Bad input never crashes a command: `silkfire score mme|mmhal|fire`, `silkfire pairs` and `silkfire validate KIND`
on a file with one bad line (not UTF-8, a raw NUL byte, broken JSON, an array, a wrong type, a number too long,
an unpaired surrogate, ...) or an empty file exit as documented (score/pairs: 2 = bad input; validate: 1 = the gate
failed) with a message naming the file, the line and -- where there is one -- the field; never a traceback. A file
with several bad lines has every one of them named.

Runs ``silkfire.cli.main`` in-process; base records are the good files of the quality corpus."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from silkfire.cli import main

CORPUS = Path(__file__).parent / "quality" / "corpus"
KINDS = ("mme", "mmhal", "fire", "vlfeedback", "pairs")
TEXT_FIELD = {"mme": "question", "mmhal": "question", "fire": "image", "vlfeedback": "prompt", "pairs": "prompt"}


def good_records(kind: str) -> list[dict]:
    """Three valid records the scorer / pair builder / gate of ``kind`` accepts."""
    if kind == "mme":
        lines = (CORPUS / "mme" / "good.jsonl").read_text().splitlines()[:4]
        return [dict(json.loads(line), prediction="Yes") for line in lines]
    if kind == "mmhal":
        return [dict(item, rating=3) for item in json.loads((CORPUS / "mmhal" / "good.json").read_text())[:3]]
    if kind == "fire":
        return json.loads((CORPUS / "fire" / "good.json").read_text())
    return [json.loads(line) for line in (CORPUS / kind / "good.jsonl").read_text().splitlines()[:3]]


def _replace_text(record: dict, field: str, make: Callable[[bytes], bytes]) -> bytes:
    """The record's JSON line with the encoded value of ``field`` replaced by ``make(encoded value)``."""
    line = json.dumps(record).encode()
    value = json.dumps(record[field]).encode()
    return line.replace(value, make(value), 1)


# name -> (builder of line 2 from the good record, field the message must name or "", validate-only text)
BAD_LINES: dict[str, Callable[[dict, str], bytes]] = {
    "not_utf8": lambda r, f: _replace_text(r, f, lambda v: v[:-1] + b"\xff\xfe\""),
    "raw_nul_byte": lambda r, f: _replace_text(r, f, lambda v: v[:-1] + b"\x00\""),
    "invalid_json": lambda r, f: _replace_text(r, f, lambda v: v + b",,"),
    "truncated": lambda r, f: json.dumps(r).encode()[:40],
    "json_array": lambda r, f: b"[1, 2, 3]",
    "json_scalar": lambda r, f: b"\"just a string\"",
    "wrong_type": lambda r, f: json.dumps({**r, f: 12345}).encode(),
    "huge_number": lambda r, f: _replace_text(r, f, lambda v: b"9" * 5000),
    "infinite_number": lambda r, f: _replace_text(r, f, lambda v: b"1e999"),
    "unpaired_surrogate": lambda r, f: _replace_text(r, f, lambda v: v[:-1] + b"\\ud800\""),
}
NAMES_FIELD = {"not_utf8", "raw_nul_byte", "invalid_json", "wrong_type", "huge_number", "infinite_number",
               "unpaired_surrogate"}


def write_bad(tmp_path: Path, kind: str, bad: str) -> Path:
    records = good_records(kind)
    lines = [json.dumps(record).encode() for record in records]
    lines[1] = BAD_LINES[bad](records[1], TEXT_FIELD[kind])
    path = tmp_path / f"{kind}-{bad}.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def command(kind: str, path: Path, tmp_path: Path) -> list[str]:
    if kind == "vlfeedback":
        return ["pairs", str(path), "--out", str(tmp_path / "pairs.jsonl")]
    return ["score", kind, str(path)]


SCORED = ("mme", "mmhal", "fire", "vlfeedback")  # vlfeedback: through `silkfire pairs`


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)  # an exception here (a crash) fails the test
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def names_line(kind: str, path: Path, err: str) -> bool:
    """file:line -- or, for FIRE's record-level checks, `file: record N` (its documented form)."""
    return f"{path}:2" in err or (kind == "fire" and f"{path}: record 2" in err)


@pytest.mark.parametrize("bad", sorted(BAD_LINES))
@pytest.mark.parametrize("kind", SCORED)
def test_score_and_pairs_exit_2_naming_file_line_and_field(kind: str, bad: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = write_bad(tmp_path, kind, bad)
    field = TEXT_FIELD[kind]
    if kind == "mmhal" and bad in ("wrong_type", "infinite_number"):
        pytest.skip("MMHal scoring does not read 'question' (only the rating): a wrong type there is no error")
    code, out, err = run(command(kind, path, tmp_path), capsys)
    assert code == 2 and out == "", (out, err)
    assert err.startswith("error: ") and "Traceback" not in err
    assert names_line(kind, path, err), err
    if bad in NAMES_FIELD:
        assert f"'{field}'" in err or f'"{field}"' in err or f"{field}:" in err, err
    assert not (tmp_path / "pairs.jsonl").exists()  # pairs: nothing written from a bad file


@pytest.mark.parametrize("kind", SCORED)
@pytest.mark.parametrize("content", [b"", b"\n \n"])
def test_an_empty_file_is_an_input_error(kind: str, content: bytes, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    code, out, err = run(command(kind, path, tmp_path), capsys)
    assert code == 2 and out == "" and f"{path}: no " in err and "empty file" in err


@pytest.mark.parametrize("kind", SCORED)
def test_every_bad_line_is_named_not_only_the_first(kind: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    records = good_records(kind)
    field = TEXT_FIELD[kind]
    lines = [json.dumps(record).encode() for record in records]
    lines.insert(1, BAD_LINES["not_utf8"](records[1], field))  # line 2
    lines.insert(3, json.dumps({**records[0], field: 7}).encode())  # line 4 (a wrong type, MMHal: a bad rating)
    if kind == "mmhal":
        lines[3] = json.dumps({**records[0], "rating": 9}).encode()
    path = tmp_path / "two-bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    code, _, err = run(command(kind, path, tmp_path), capsys)
    assert code == 2 and "2 bad records" in err, err
    assert f"{path}:2: not valid UTF-8" in err
    assert f"{path}:4" in err or (kind == "fire" and f"{path}: record 4" in err), err


def test_pairs_refuses_a_nul_character_in_an_id_or_path_but_keeps_it_in_text(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = good_records("vlfeedback")
    path = tmp_path / "nul.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [records[0], {**records[1], "id": "vlf\u00002"}]) + "\n")
    code, _, err = run(command("vlfeedback", path, tmp_path), capsys)
    assert code == 2 and f"{path}:2: id: holds a NUL character" in err
    path.write_text("\n".join(json.dumps(r) for r in [records[0], {**records[1], "prompt": "a\u0000b"}]) + "\n")
    code, out, _ = run(command("vlfeedback", path, tmp_path), capsys)
    assert code == 0 and json.loads(out)["records"] == 2  # a NUL in free text is text, written back escaped


def test_a_json_list_names_the_line_of_the_bad_byte(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = good_records("mme")
    text = json.dumps(records, indent=1).encode()
    path = tmp_path / "preds.json"
    path.write_bytes(text.replace(b'"Yes"', b'"Y\xffes"', 1))
    line = text[:text.index(b'"Yes"')].count(b"\n") + 1
    code, _, err = run(["score", "mme", str(path)], capsys)
    assert code == 2 and f"{path}:{line}: not valid UTF-8 (byte 0xff" in err and 'near field "answer"' in err


def test_usage_errors_of_score_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "preds.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in good_records("mme")) + "\n")
    code, _, err = run(["score", "mme", str(path), "--group", "x=vision"], capsys)
    assert code == 2 and "--group expects" in err
    code, _, err = run(["score", "mme", str(tmp_path / "absent.jsonl")], capsys)
    assert code == 2 and "no such file" in err
    code, _, err = run(["score", "mme", str(tmp_path)], capsys)  # a folder
    assert code == 2 and "no such file" in err


VALIDATE_BAD = ("not_utf8", "raw_nul_byte", "invalid_json", "json_array", "wrong_type", "huge_number",
                "unpaired_surrogate")


@pytest.mark.parametrize("bad", VALIDATE_BAD)
@pytest.mark.parametrize("kind", KINDS)
def test_validate_fails_the_gate_naming_every_bad_line(kind: str, bad: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The gate: exit 1 (failed), the report names file:line of the bad line and of a second bad line too."""
    records = good_records(kind)
    field = TEXT_FIELD[kind]
    lines = [json.dumps(record).encode() for record in records]
    lines[1] = BAD_LINES[bad](records[1], field)
    lines.append(b"{\"cut\": ")  # a second bad line (the last), which must be reported too
    path = tmp_path / f"{kind}.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    code, out, err = run(["validate", kind, str(path), "--report-dir", str(tmp_path / "report"),
                          "--set", "data_docs=false", "--set", "check_images=false"], capsys)
    assert code == 1, (out, err)
    assert "FAILED" in out and "Traceback" not in err and "error:" not in err
    assert f"{path.name}:2 " in out, out
    assert f"{path.name}:{len(lines)} " in out, out
    if bad == "wrong_type":
        assert f"{field} -> " in out
    if bad == "not_utf8":
        assert "not valid UTF-8 (byte 0xff" in out and f'near field "{field}"' in out


@pytest.mark.parametrize("kind", KINDS)
def test_validate_an_empty_file_fails(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    code, out, _ = run(["validate", kind, str(path), "--report-dir", str(tmp_path / "r"), "--set",
                        "data_docs=false"], capsys)
    assert code == 1 and "at least one record" in out


def test_validate_a_broken_json_list_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = json.dumps(good_records("mmhal"), indent=1).encode()
    path = tmp_path / "items.json"
    path.write_bytes(text.replace(b'"gt_answer": "', b'"gt_answer": "\xff', 1))
    line = text[:text.index(b'"gt_answer"')].count(b"\n") + 1
    code, out, _ = run(["validate", "mmhal", str(path), "--report-dir", str(tmp_path / "r"), "--set",
                        "data_docs=false"], capsys)
    assert code == 1 and f"{path}:{line}: not valid UTF-8 (byte 0xff" in out and 'near field "gt_answer"' in out


def test_validate_a_gate_that_raises_is_exit_1_with_the_file_not_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Should some rule still raise on a row, the command says so in one line and exits 1 (the file did not
    pass), not 2: the command itself was right."""
    import silkfire.quality.cli as quality_cli

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("embedded null byte")

    path = tmp_path / "x.jsonl"
    path.write_text("{}\n")
    monkeypatch.setattr(quality_cli, "validate", broken)
    code, out, err = run(["validate", "vlfeedback", str(path), "--report-dir", str(tmp_path / "r")], capsys)
    assert code == 1 and out == ""
    assert f"error: vlfeedback gate: {path}: could not check the file (ValueError: embedded null byte)" in err


def test_validate_a_malformed_previous_profile_is_a_usage_error(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    profile = tmp_path / "profile.json"
    profile.write_bytes(b"\xff not json")
    path = tmp_path / "x.jsonl"
    path.write_text("{}\n")
    code, out, err = run(["validate", "mme", str(path), "--report-dir", str(tmp_path / "r"),
                          "--previous-profile", str(profile)], capsys)
    assert code == 2 and out == "" and f"previous profile {profile} cannot be read" in err
