"""The four published data sets in their exact released layouts (tiny files made by silkfire.data.testing), read by
the real loaders, through their gates (`silkfire validate`), with embedded images extracted safely; bad rows get
the gate's error naming file, row/record and field."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest

from silkfire.data import published
from silkfire.data import testing as make
from silkfire.images import check_image
from silkfire.quality.cli import validate_command


def gate(kind: str, path: Path, tmp_path: Path, *overrides: str, image_root: Path | None = None) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = validate_command(kind, path, image_root, ["data_docs=false", *overrides],
                            report_dir=tmp_path / "reports" / kind, out=out, err=err)
    return code, out.getvalue() + err.getvalue()


def test_mme_parquet_passes_its_gate_and_its_images_are_extracted_by_content_hash(tmp_path: Path) -> None:
    path = make.make_mme_parquet(tmp_path / "MME" / "data" / "test-00000-of-00001.parquet")
    code, text = gate("mme", path, tmp_path)
    assert code == 0, text
    assert "passed  " + str(path) in text and "(8 rows" in text
    converted = published.read_records_any(tmp_path / "reports/mme/converted/test-00000-of-00001.jsonl")
    assert [r["question_id"] for r in converted[:2]] == ["existence/000000000000.jpg"] * 2
    data = make.image_bytes("red", fmt="JPEG")
    digest = hashlib.sha256(data).hexdigest()
    assert converted[0]["image"] == f"extracted/{digest[:2]}/{digest}.jpg"
    extracted = path.parent / converted[0]["image"]
    assert extracted.read_bytes() == data
    assert check_image(path.parent, converted[0]["image"]).format == "JPEG"  # reads go through the policy
    assert len({r["image"] for r in converted}) == 4  # two questions per image, one file each
    # again: the same files are reused, nothing else written
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("extracted/*/*"))
    assert gate("mme", path, tmp_path)[0] == 0
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("extracted/*/*")) == before


def test_bad_mme_rows_are_named_by_file_row_and_field_and_a_row_path_is_never_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(make.image_bytes("blue"))
    rows = make.mme_rows()
    rows[2]["answer"] = "Maybe"
    rows[5]["image"] = {"bytes": None, "path": str(secret)}  # an HF struct naming a file elsewhere
    rows[6]["image"] = {"bytes": b"not an image", "path": "x.png"}
    path = make.make_mme_parquet(tmp_path / "bench" / "mme.parquet", rows)
    code, text = gate("mme", path, tmp_path)
    assert code == 1
    assert "FAILED  " + str(path) in text
    assert "mme.parquet:3  answer -> 'Maybe'" in text
    assert "rows: 6" in text and "on field 'image'" in text
    assert "mme.parquet:7  image -> \"cannot decode image" in text
    report = json.loads((tmp_path / "reports/mme/validation.json").read_text())
    assert report["tables"][0]["source"] == str(path) and report["tables"][0]["line_label"] == "row"
    assert any("not followed" in problem for problem in report["stats"]["image_problems"])
    assert secret.read_bytes() == make.image_bytes("blue")  # untouched, unread
    assert not any(p.name == "secret.png" for p in (tmp_path / "bench").rglob("*"))


def test_extraction_refuses_a_folder_that_leads_out_of_the_data_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / published.EXTRACTED).symlink_to(outside, target_is_directory=True)
    store = published.ImageStore(root)
    relative, why = store.put({"bytes": make.image_bytes(), "path": "a.png"})
    assert relative is None and "leaves the data root" in why
    assert not any(p.is_file() for p in outside.rglob("*"))


def test_oversized_and_missing_image_bytes_are_refused_before_writing(tmp_path: Path, monkeypatch) -> None:
    import silkfire.images

    monkeypatch.setattr(silkfire.images, "MAX_IMAGE_BYTES", 10)
    store = published.ImageStore(tmp_path)
    assert store.put(make.image_bytes())[1].startswith("image bytes too large")
    assert store.put({"bytes": None, "path": None}) == (None, "no image bytes")
    assert store.put(42)[0] is None
    assert not (tmp_path / published.EXTRACTED).exists() or not any((tmp_path / published.EXTRACTED).rglob("*.*"))


@pytest.mark.parametrize("layout", ["parquet", "parquet-paths", "jsonl"])
def test_vlfeedback_as_published_passes_its_gate(tmp_path: Path, layout: str) -> None:
    path = make.make_vlfeedback(tmp_path / "VLFeedback", layout)
    root = tmp_path / "VLFeedback"
    code, text = gate("vlfeedback", path, tmp_path, image_root=root)
    assert code == 0, text
    assert "(3 rows" in text
    if layout == "parquet":  # image bytes extracted; the released img_path kept beside the extracted one
        converted = published.read_records_any(tmp_path / "reports/vlfeedback/converted" / f"{path.stem}.jsonl")
        assert all(r["img_path"].startswith("extracted/") for r in converted)
        assert converted[0]["published_img_path"] == "merged_images/svit-conversation-1219.jpg"
        assert isinstance(converted[0]["completions"], list) and converted[0]["completions"][0]["annotations"][
            "Visual Faithfulness"]["Rating"] == "5"


def test_a_bad_vlfeedback_rating_in_parquet_is_named_by_row_and_field(tmp_path: Path) -> None:
    rows = make.vlfeedback_rows()
    rows[1]["completions"][2]["annotations"]["Helpfulness"]["Rating"] = "N/A"
    path = make.make_vlfeedback(tmp_path / "VLFeedback", "parquet", rows)
    code, text = gate("vlfeedback", path, tmp_path, image_root=tmp_path / "VLFeedback")
    assert code == 1
    assert "train-00000-of-00001.parquet:2" in text
    assert "completions[2].annotations['Helpfulness'].Rating = 'N/A'" in text


@pytest.mark.parametrize("name", ["FIRE-train-100K.json", "FIRE-test.json"])
def test_fire_files_as_published_pass_their_gate(tmp_path: Path, name: str) -> None:
    path = make.make_fire(tmp_path / "FIRE", name)
    code, text = gate("fire", path, tmp_path, image_root=tmp_path / "FIRE")
    assert code == 0, text
    records = json.loads(path.read_text())
    assert isinstance(records, list) and records[0]["split"] == ("fire_100k" if "train" in name else "fire_test")


def test_a_bad_fire_record_is_named_by_record_and_field(tmp_path: Path) -> None:
    path = make.make_fire(tmp_path / "FIRE")  # the images
    records = json.loads(path.read_text())
    records[2]["conversations"][1]["role"] = "student"
    records[3]["image"] = "../outside.png"
    path.write_text(json.dumps(records))
    code, text = gate("fire", path, tmp_path, image_root=tmp_path / "FIRE")
    assert code == 1
    assert "FIRE-test.json:3  conversations -> \"turn 2: role 'student', expected 'teacher'" in text
    assert "FIRE-test.json:4  image -> \"path escapes the data root through '..'\"" in text


def test_mmhal_template_items_find_their_images_and_pass_the_gate(tmp_path: Path) -> None:
    path = make.make_mmhal(tmp_path / "MMHal-Bench")
    items = published.mmhal_items(path)
    assert [item["image_path"] for item in items[:2]] == ["images/0_abc_o.jpg", "images/1_abc_o.jpg"]
    assert all(check_image(path.parent, item["image_path"]) for item in items)
    assert gate("mmhal", path, tmp_path)[0] == 0
    bad = make.mmhal_items()
    bad[1]["question_type"] = "counting"
    code, text = gate("mmhal", make.make_mmhal(tmp_path / "bad", bad), tmp_path)
    assert code == 1
    assert "response_template.json:2  question_type -> \"item 1 is 'counting', expected 'adversarial'" in text


def test_score_reads_mme_parquet_predictions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from silkfire.cli import main

    rows = make.mme_rows()
    for row, prediction in zip(rows, ["Yes", "No", "Yes", "Yes", "No", "No", "yes", "no"]):
        row["prediction"] = prediction
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "predictions.parquet")
    assert main(["score", "mme", str(tmp_path / "predictions.parquet")]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["subtasks"]["existence"] == {"acc": 0.75, "acc_plus": 0.5, "score": 125.0}
    assert scores["subtasks"]["color"]["acc"] == 0.75
    del rows[3]["prediction"]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    assert main(["score", "mme", str(tmp_path / "bad.parquet")]) == 2
    assert "bad.parquet: row 4: MME record 3" in capsys.readouterr().err


def test_a_parquet_row_given_to_a_model_reader_is_refused_with_the_way_out(tmp_path: Path) -> None:
    from silkfire.eval.answers import generate_answers

    row = make.mme_rows()[0]
    with pytest.raises(ValueError, match=r"field 'image' is dict.*silkfire.data.published"):
        generate_answers(None, None, [row], tmp_path)
