"""`silkfire validate KIND PATH [--image-root DIR]` through validate_command / main: exit codes, reports, roots."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from silkfire.quality.cli import main, validate_command


def _run(*args, **kwargs) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = validate_command(*args, out=out, err=err, **kwargs)
    return code, out.getvalue(), err.getvalue()


def test_a_good_file_passes_with_data_docs(corpus: Path, tmp_path: Path) -> None:
    code, out, _ = _run("mmhal", corpus / "mmhal" / "good.json", corpus, report_dir=tmp_path)
    assert code == 0, out
    assert "Data quality gate 'mmhal': PASSED" in out and "rows in 16, out 16, quarantined 0" in out
    assert (tmp_path / "data_docs" / "index.html").is_file()
    assert json.loads((tmp_path / "validation.json").read_text())["success"] is True
    assert (tmp_path / "profile.json").is_file()


def test_a_bad_file_fails_naming_file_line_and_field(corpus: Path, tmp_path: Path) -> None:
    code, out, _ = _run("vlfeedback", corpus / "vlfeedback" / "bad.jsonl", corpus, ["data_docs=false"],
                        report_dir=tmp_path)
    assert code == 1
    assert "FAILED" in out and "bad.jsonl:9  line -> 'not valid JSON" in out  # a truncated line, not a crash
    assert "bad.jsonl:2  completions -> \"completions[1].annotations['Helpfulness'].Rating = 'N/A'" in out
    assert "bad.jsonl:13  img_path -> \"path escapes the data root through '..'\"" in out
    assert "what to do:" in out


def test_undecodable_bytes_are_a_failure_with_their_line(corpus: Path, tmp_path: Path) -> None:
    code, out, _ = _run("mme", corpus / "mme" / "undecodable.jsonl", corpus, ["data_docs=false"], report_dir=tmp_path)
    assert code == 1 and "undecodable.jsonl:2" in out and "not valid UTF-8" in out


def test_images_resolve_against_the_files_folder_by_default(corpus: Path, tmp_path: Path) -> None:
    folder = tmp_path / "release"
    (folder / "images").mkdir(parents=True)
    shutil.copy(corpus / "pairs" / "good.jsonl", folder / "pairs.jsonl")
    Image.new("RGB", (8, 8)).save(folder / "images" / "ok.png")
    assert _run("pairs", folder / "pairs.jsonl", None, ["data_docs=false"], report_dir=tmp_path / "r1")[0] == 0
    code, out, _ = _run("pairs", folder / "pairs.jsonl", tmp_path, ["data_docs=false"], report_dir=tmp_path / "r2")
    assert code == 1 and "file not found" in out  # another root: the same relative paths point at nothing
    # image checks can be switched off (text-only dry runs, benchmarks)
    assert _run("pairs", folder / "pairs.jsonl", tmp_path, ["data_docs=false", "check_images=false"],
                report_dir=tmp_path / "r3")[0] == 0


def test_filter_policy_from_an_override(corpus: Path, tmp_path: Path) -> None:
    code, out, _ = _run("fire", corpus / "fire" / "bad.jsonl", corpus,
                        ["data_docs=false", "fire.policy=filter", "max_quarantine_fraction=1.0"], report_dir=tmp_path)
    assert code == 0, out
    assert "rows in 16, out 1, quarantined 15" in out and (tmp_path / "quarantine.jsonl").is_file()


@pytest.mark.parametrize(("args", "message"), [
    (("quiz", Path("x.jsonl"), None, []), "unknown kind 'quiz'"),
    (("fire", Path("x.jsonl"), None, ["fire.polcy=filter"]), "quality.fire: unknown key(s) ['polcy']"),
    (("fire", Path("x.jsonl"), None, ["fire.policy"]), "expected key=value"),
    (("fire", Path("x.jsonl"), None, ["policy=drop"]), "policy must be one of"),
])
def test_usage_errors_exit_2(args, message: str, tmp_path: Path) -> None:
    code, out, err = _run(*args, report_dir=tmp_path)
    assert code == 2 and message in err and out == ""


def test_missing_file_and_previous_profile(tmp_path: Path) -> None:
    code, out, _ = _run("mme", tmp_path / "absent.jsonl", None, ["data_docs=false"], report_dir=tmp_path / "r")
    assert code == 1 and "no such file" in out
    code, _, err = _run("mme", tmp_path / "absent.jsonl", None, [], report_dir=tmp_path / "r",
                        previous_profile=tmp_path / "nope.json")
    assert code == 2 and "previous profile" in err


def test_main_parses_the_command_line(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["mme", str(corpus / "mme" / "good.jsonl"), "--image-root", str(corpus), "--report-dir",
                 str(tmp_path), "--set", "data_docs=false"])
    assert code == 0 and "PASSED" in capsys.readouterr().out


def test_failure_rows_for_a_table_artefact(corpus: Path, corpus_config, tmp_path: Path) -> None:
    from silkfire.quality.cli import validate

    result = validate("mme", corpus / "mme" / "bad.jsonl", corpus_config, tmp_path, corpus)
    rows = result.failure_rows()
    assert len(rows) == len(result.failures) == 6
    assert set(rows[0]) >= {"table", "expectation", "column", "rows", "example"}
    answer = next(row for row in rows if row["column"] == "answer")
    assert answer == {**answer, "table": "mme", "expectation": "expect_column_values_to_be_in_set", "rows": 1,
                      "example": "bad.jsonl:5 'yes'"}
    assert "| `bad.jsonl` | `answer` |" in result.to_markdown()
