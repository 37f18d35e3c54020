"""`silkfire eval`: a local checkpoint (the tiny test model) answers published benchmark files in their exact layouts
(lmms-lab/MME parquet, MMHal-Bench response_template.json + images, FIRE-Bench JSON) after their gate, and the
benchmark's own scorer scores the answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from silkfire.cli import main
from silkfire.data import testing as make
from silkfire.io import read_records

QUIET = ["--quiet", "--set", "data_docs=false", "--batch-size", "8"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # shared 2-core machine


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from silkfire.models.testing import make_test_model

    return make_test_model(tmp_path_factory.mktemp("model") / "model")


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, str]:
    code = main(["eval", *args, *QUIET])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else {}), captured.err


def test_mme_parquet_is_answered_and_scored_with_the_official_rules(tmp_path: Path, model: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from silkfire.eval.mme import score_mme

    data = tmp_path / "MME" / "data"
    make.make_mme_parquet(data / "test-00000-of-00002.parquet", make.mme_rows()[:4])
    make.make_mme_parquet(data / "test-00001-of-00002.parquet", make.mme_rows()[4:])
    out = tmp_path / "out"
    code, scores, err = run(["mme", str(data), "--model", str(model), "--out", str(out)], capsys)
    assert code == 0, err
    assert scores["questions"] == 8 and scores["parser"] == "mme-official" and scores["gate"]["success"]
    assert set(scores["subtasks"]) == {"existence", "color"}
    predictions = read_records(out / "predictions.jsonl")
    assert all(isinstance(p["prediction"], str) and p["image"].startswith("extracted/") for p in predictions)
    assert (data / predictions[0]["image"]).is_file()  # extracted under the data root (the shards' folder)
    rescored = score_mme(predictions)
    assert rescored["perception"] == scores["perception"]
    assert json.loads((out / "scores.json").read_text())["perception"] == scores["perception"]

    code, scores, _ = run(["mme", str(data), "--model", str(model), "--out", str(tmp_path / "two"),
                           "--max-items", "3"], capsys)
    assert code == 0 and scores["questions"] == 4  # both questions of the second image kept


def test_a_benchmark_file_that_fails_its_gate_is_not_evaluated_unless_filtered(
        tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = make.mme_rows()
    rows[2]["answer"] = "Maybe"
    path = make.make_mme_parquet(tmp_path / "mme.parquet", rows)
    out = tmp_path / "out"
    code, _, err = run(["mme", str(path), "--model", str(model), "--out", str(out)], capsys)
    assert code == 1
    assert "FAILED  " + str(path) in err and "mme.parquet:3  answer -> 'Maybe'" in err
    assert not (out / "predictions.jsonl").exists()

    code, scores, err = run(["mme", str(path), "--model", str(model), "--out", str(out), "--set", "mme.policy=filter",
                             "--set", "max_quarantine_fraction=0.5"], capsys)
    assert code == 0, err
    assert scores["questions"] == 6 and scores["gate"]["rows_quarantined"] == 2  # the pair goes together


def test_usage_errors_exit_2(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make.make_mme_parquet(tmp_path / "mme.parquet")
    code, _, err = run(["mme", str(path), "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = run(["mme", str(tmp_path / "missing.parquet"), "--model", str(model)], capsys)
    assert code == 2 and "missing.parquet" in err
    code, _, err = run(["mmhal", str(path), "--model", str(model), "--judge-url", "http://127.0.0.1:9"], capsys)
    assert code == 2 and "--judge-url and --judge-model go together" in err


def test_mmhal_template_is_answered_then_rated_by_the_judge(tmp_path: Path, model: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from silkfire.llm.testing import FakeChatServer

    path = make.make_mmhal(tmp_path / "MMHal-Bench")
    out = tmp_path / "out"
    code, scores, err = run(["mmhal", str(path), "--model", str(model), "--out", str(out), "--max-new-tokens", "8"],
                            capsys)
    assert code == 0, err
    assert scores["rated"] is False and scores["items"] == 8 and scores["gate"]["images_checked"] == 8
    responses = json.loads((out / "responses.json").read_text())  # the template's layout, model_answer filled
    assert [set(item) for item in responses] == [set(make.mmhal_items()[0])] * 8
    assert all(isinstance(item["model_answer"], str) for item in responses)

    with FakeChatServer("The response is fine. Rating: 4") as server:
        code, scores, err = run(["mmhal", str(path), "--model", str(model), "--out", str(out), "--max-new-tokens", "8",
                                 "--judge-url", server.url, "--judge-model", "gpt-4", "--judge-key-env", "none"],
                                capsys)
        assert server.calls >= 1
    assert code == 0, err
    assert scores["rated"] and scores["score"] == 4.0 and scores["hallucination_rate"] == 0.0
    assert set(scores["per_type"]) == set(make.MMHAL_TYPES)
    assert all(row["rating"] == 4 for row in read_records(out / "predictions.jsonl"))


def test_fire_bench_fixed_and_free_dialogue(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make.make_fire(tmp_path / "FIRE", "FIRE-test.json")
    out = tmp_path / "student"
    code, scores, err = run(["fire", str(path), "--model", str(model), "--out", str(out), "--max-new-tokens", "8",
                             "--teacher", str(model), "--max-turns", "2"], capsys)
    assert code == 0, err
    assert scores["dialogues"] == 4 and scores["fixed"]["items"] == 4  # one refined answer per dialogue
    assert {"BLEU-1", "BLEU-4", "CIDEr"} <= set(scores["fixed"])
    assert scores["free"]["dialogues"] == 4 and {"AT", "ADR", "ATR", "RR"} <= set(scores["free"])
    assert (out / "free_dialogues.jsonl").is_file()
    rows = read_records(out / "predictions.jsonl")
    assert rows[0]["reference"].startswith("Thought:") and rows[0]["role"] == "student"

    code, scores, err = run(["fire", str(path), "--model", str(model), "--out", str(tmp_path / "teacher"),
                             "--max-new-tokens", "8", "--role", "teacher", "--teacher-instruction", "short"], capsys)
    assert code == 0, err
    assert scores["fixed"]["items"] == 8 and "MAE" in scores["fixed"]  # every teacher turn, score MAE
