"""The workspace lock: a second run is refused with a message naming the holder, or waits for it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from silkfire.workspace import LOCK_FILE, WorkspaceBusy, workspace_lock

HOLD = """
import sys, time
from pathlib import Path
from silkfire.workspace import workspace_lock
with workspace_lock(Path(sys.argv[1]), what="flow run test-holder"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(root: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_is_refused_with_the_holder(tmp_path: Path) -> None:
    proc = _holder(tmp_path, 30)
    try:
        with pytest.raises(WorkspaceBusy, match=rf"busy: pid {proc.pid} .*test-holder"):
            with workspace_lock(tmp_path):
                pass
    finally:
        proc.kill()
        proc.wait()
    # A killed holder leaves no stale lock behind.
    with workspace_lock(tmp_path) as path:
        assert path == tmp_path / LOCK_FILE


def test_a_waiting_run_starts_when_the_holder_ends(tmp_path: Path) -> None:
    proc = _holder(tmp_path, 1.5)
    started = time.monotonic()
    with workspace_lock(tmp_path, wait_seconds=60, poll_seconds=0.2):
        waited = time.monotonic() - started
    proc.wait()
    assert waited > 0.5  # it did wait for the holder rather than running beside it


DIE_HOLDING = """
import os, signal, sys
from pathlib import Path
from silkfire.workspace import note_holder, workspace_lock
root = Path(sys.argv[1])
with workspace_lock(root, what="flow run doomed"):
    import mlflow
    from silkfire.tracking.runs import run_tags
    from silkfire.tracking.store import configure
    configure(root, "silkfire")
    note_holder(root, prefect_flow_run="5f0c9a52-8d0b-4c55-9a4b-7c1f2e0d9b11")
    parent = mlflow.start_run(run_name="pipeline", tags=run_tags(root))
    mlflow.start_run(run_name="sft", nested=True, tags=run_tags(root, "sft"))
    print(parent.info.run_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of a stage
"""


def test_a_dead_holders_runs_are_marked_killed_by_the_next_holder(mlflow_root: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """SIGKILL leaves the parent and stage MLflow runs RUNNING; the next command to take the workspace marks them
    KILLED with a note, queues the dead Prefect flow run for the next flow, and leaves runs of others alone."""
    import mlflow
    from mlflow import MlflowClient

    from silkfire.tracking.store import configure, tracking_uri
    from silkfire.workspace import DEAD_FLOW_RUNS

    configure(mlflow_root, "silkfire")
    bystander = mlflow.start_run(run_name="someone else's notebook")  # RUNNING, not the dead holder's
    proc = subprocess.run([sys.executable, "-c", DIE_HOLDING, str(mlflow_root)], capture_output=True, text=True)
    assert proc.returncode == -9
    client = MlflowClient(tracking_uri(mlflow_root))
    runs = client.search_runs(["0", *[e.experiment_id for e in client.search_experiments()]])
    dead = [r for r in runs if r.info.run_name in ("pipeline", "sft")]
    assert len(dead) == 2 and {r.info.status for r in dead} == {"RUNNING"}

    with workspace_lock(mlflow_root, what="next run"):
        pass
    after = {r.info.run_id: r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])}
    assert {after[r.info.run_id].info.status for r in dead} == {"KILLED"}
    assert all("died without closing this run" in after[r.info.run_id].data.tags["silkfire.killed"] for r in dead)
    assert after[bystander.info.run_id].info.status == "RUNNING"
    assert "2 MLflow run(s) marked KILLED" in capsys.readouterr().err
    assert "5f0c9a52-8d0b-4c55-9a4b-7c1f2e0d9b11" in (mlflow_root / DEAD_FLOW_RUNS).read_text()
    mlflow.end_run()
    # A clean end leaves nothing to recover: the next holder finds an empty record.
    with workspace_lock(mlflow_root):
        pass
    assert "marked KILLED" not in capsys.readouterr().err
    assert (mlflow_root / LOCK_FILE).read_text() == ""


def test_a_holder_that_fails_with_an_exception_leaves_nothing_to_recover(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A failed gate or stage ends the run through an exception: the process closes its runs itself, so the next
    holder must not call it dead (nor mark its Prefect flow run Crashed)."""
    with pytest.raises(RuntimeError, match="gate failed"):
        with workspace_lock(tmp_path, what="a failing run"):
            raise RuntimeError("gate failed")
    assert (tmp_path / LOCK_FILE).read_text() == ""
    with workspace_lock(tmp_path, what="next run"):
        pass
    assert "died" not in capsys.readouterr().err


def test_children_of_the_holder_join_its_lock_and_strangers_are_refused(tmp_path: Path) -> None:
    """`silkfire stage` run by DVC under `silkfire run` inherits the token and joins; a process without it waits."""
    from silkfire.workspace import TOKEN_ENV

    child = "import sys; from pathlib import Path; from silkfire.workspace import workspace_lock\n" \
            "with workspace_lock(Path(sys.argv[1])): print('joined')"
    with workspace_lock(tmp_path):
        joined = subprocess.run([sys.executable, "-c", child, str(tmp_path)], capture_output=True, text=True)
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        stranger = subprocess.run([sys.executable, "-c", child, str(tmp_path)], capture_output=True, text=True,
                                  env=env)
    assert joined.returncode == 0 and joined.stdout.strip() == "joined"
    assert stranger.returncode != 0 and "is busy" in stranger.stderr


@pytest.mark.parametrize("command", [["params", "train.max_steps=3"], ["stage", "generate"], ["run"],
                                     ["sweep", "train.max_steps=1,2", "--metric", "sft.train_loss"]])
def test_writing_commands_are_refused_in_one_line_under_two_seconds(tmp_path: Path, command: list[str]) -> None:
    """While a run holds the workspace, `silkfire params|stage|run|sweep` exit 3 with one line naming the holder,
    before Prefect or any heavy library starts, and params.yaml is untouched."""
    project = tmp_path / "project"
    (project / "conf").mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    (project / "params.yaml").write_text("seed: 0\n")
    proc = _holder(project, 30)
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("SILKFIRE_WORKSPACE_TOKEN", "SILKFIRE_ROOT")}
        started = time.monotonic()
        refused = subprocess.run([sys.executable, "-m", "silkfire.cli", *command], cwd=project, env=env,
                                 capture_output=True, text=True)
        elapsed = time.monotonic() - started
    finally:
        proc.kill()
        proc.wait()
    assert refused.returncode == 3, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and f"busy: pid {proc.pid}" in lines[0] and "test-holder" in lines[0]
    assert elapsed < 2.0, elapsed
    assert (project / "params.yaml").read_text() == "seed: 0\n"
