"""kill -9 in the middle of SFT, then `silkfire run` again with no flag: the dead run's MLflow runs end KILLED, its
Prefect flow run Crashed, nothing is left RUNNING, and SFT resumes from its last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

RUN = ["experiment=smoke", "train.max_steps=40", "train.save_steps=10", "train.logging_steps=5"]


def _silkfire(project: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(Path(sys.executable).with_name("silkfire")), "run", "--no-push", *args],
                            cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: kill -9 hits the whole run


def _first_checkpoint(project: Path, timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # a complete one (trainer_state.json is written last): a kill during the save leaves a checkpoint the
        # rerun rightly ignores, and the test would race the writer
        found = [p for p in (project / "models").rglob("checkpoint-*") if (p / "trainer_state.json").is_file()] \
            if (project / "models").is_dir() else []
        found += [p for p in (project / ".silkfire").rglob("checkpoint-*") if (p / "trainer_state.json").is_file()] \
            if (project / ".silkfire").is_dir() else []
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError("SFT never wrote a checkpoint")


def _mlflow_statuses(project: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(project / "mlruns" / "mlflow.db") as db:
        rows = db.execute("select name, status from runs").fetchall()
    # a pipeline's parent run is named "pipeline · <experiment> · seed <seed> · <flow run>"
    return [(name.split(" · ")[0], status) for name, status in rows]


def _prefect_states(home: Path) -> list[str]:
    with sqlite3.connect(home / "prefect.db") as db:
        return [row[0] for row in db.execute("select state_type from flow_run")]


@pytest.mark.slow  # two smoke runs with Prefect's temporary server, ~3 min on the shared 2-core machine
def test_sigkill_mid_sft_then_a_plain_rerun_cleans_up_and_resumes(project: Path, tmp_path: Path) -> None:
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "SILKFIRE_WORKSPACE"))}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    doomed = _silkfire(project, env, *RUN)
    try:
        _first_checkpoint(project, timeout=600)
    finally:
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait()
    left = _mlflow_statuses(project)
    assert ("sft", "RUNNING") in left and ("pipeline", "RUNNING") in left
    assert "RUNNING" in _prefect_states(home)

    again = _silkfire(project, env, *RUN)
    out, _ = again.communicate(timeout=900)
    assert again.returncode == 0, out[-3000:]
    assert "died holding the workspace" in out and "MLflow run(s) marked KILLED" in out

    statuses = _mlflow_statuses(project)
    assert not [name for name, status in statuses if status == "RUNNING"], statuses
    assert ("sft", "KILLED") in statuses and ("pipeline", "KILLED") in statuses
    states = _prefect_states(home)
    assert "RUNNING" not in states and "CRASHED" in states and "COMPLETED" in states, states
    sft = json.loads((project / "metrics" / "sft.json").read_text())
    assert sft["resumed_from_step"] >= 10 and sft["steps_run"] == 40 - sft["resumed_from_step"], sft
