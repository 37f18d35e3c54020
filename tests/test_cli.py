"""The `silkfire` command as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SILKFIRE = [str(Path(sys.executable).with_name("silkfire"))]


def _records() -> list[dict[str, str]]:
    return [
        {"question_id": "existence/1.png", "category": "existence", "question": "q", "answer": "Yes", "prediction": "Yes"},
        {"question_id": "existence/1.png", "category": "existence", "question": "q", "answer": "No", "prediction": "no."},
        {"question_id": "existence/2.png", "category": "existence", "question": "q", "answer": "Yes", "prediction": "No"},
        {"question_id": "existence/2.png", "category": "existence", "question": "q", "answer": "No", "prediction": "no"},
        {"question_id": "code/1.png", "category": "code_reasoning", "question": "q", "answer": "Yes", "prediction": "yes"},
        {"question_id": "code/1.png", "category": "code_reasoning", "question": "q", "answer": "No", "prediction": "The answer is no"},
    ]


def _score(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SILKFIRE, "score", "mme", str(path), *extra], capture_output=True, text=True)


def test_score_mme_jsonl_prints_the_official_scores(tmp_path: Path) -> None:
    path = tmp_path / "preds.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _records()) + "\n")
    done = _score(path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # existence: 3/4 right, 1 of 2 images fully right -> 75 + 50; code: "The answer is no" is "other" -> wrong
    assert result["subtasks"]["existence"] == {"acc": 0.75, "acc_plus": 0.5, "score": 125.0}
    assert result["subtasks"]["code_reasoning"] == {"acc": 0.5, "acc_plus": 0.0, "score": 50.0}
    assert result["perception"] == 125.0 and result["cognition"] == 50.0


def test_score_mme_reads_a_json_list_and_custom_groups(tmp_path: Path) -> None:
    records = [dict(r, category="my_task") for r in _records()[:2]]
    path = tmp_path / "preds.json"
    path.write_text(json.dumps(records))
    assert _score(path).returncode != 0  # an undeclared category is refused ...
    done = _score(path, "--group", "my_task=cognition")  # ... until its group is declared
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cognition"] == 200.0


def test_score_mme_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "preds.jsonl"
    path.write_text(json.dumps(_records()[0]) + "\n{\"question_id\": \n")
    done = _score(path)
    assert done.returncode == 2
    assert f"{path}:2" in done.stderr


def test_scheduled_deployment_is_cron_with_one_run_at_a_time() -> None:
    from silkfire.cli import load_flow_module

    module = load_flow_module(Path(__file__).parents[1])
    deployment = module.scheduled_deployment("0 2 * * *", ["experiment=smoke"])
    assert deployment.schedules[0].schedule.cron == "0 2 * * *"
    assert deployment.parameters == {"overrides": ["experiment=smoke"]}
    assert deployment.concurrency_limit == 1


def test_loading_the_flow_turns_off_prefect_server_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    # offline, the temporary server's telemetry call fails and logs an ERROR line in every run
    from silkfire.cli import load_flow_module

    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED", raising=False)
    load_flow_module(Path(__file__).parents[1])
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "true")  # a user's own choice is kept
    load_flow_module(Path(__file__).parents[1])
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "true"


def test_validate_command_fails_a_bad_file_with_its_line(tmp_path: Path) -> None:
    good = {"question_id": "existence/1.png", "category": "existence", "question": "Is there a cat? Please answer yes or no.",
            "answer": "Yes"}
    path = tmp_path / "mme.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(dict(good, answer="Maybe")) + "\n")
    done = subprocess.run([*SILKFIRE, "validate", "mme", str(path), "--report-dir", str(tmp_path / "r"),
                           "--set", "check_images=false", "--set", "data_docs=false"],
                          capture_output=True, text=True)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "mme.jsonl" in done.stdout + done.stderr and "Maybe" in done.stdout + done.stderr


@pytest.mark.parametrize(("override", "words"), [
    ("+silkie.pairs.min_margn=1", "did you mean silkie.pairs.min_margin?"),  # the config schema (compose time)
    ("train.learnng_rate=1", "did you mean train.learning_rate?"),  # Hydra's own refusal, with the same hint
    ("train.max_steps=abc", "'abc' is a string; conf/ declares a number"),
])
def test_a_bad_override_is_one_error_line_with_the_key_meant(override: str, words: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from silkfire.cli import main

    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "conf", tmp_path / "conf")
    shutil.copy(root / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.setenv("SILKFIRE_ROOT", str(tmp_path))
    assert main(["params", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and "Traceback" not in err
    assert not (tmp_path / "params.yaml").exists()
