"""The workspace lock: a second run is refused with a message naming the holder, or waits for it."""

from __future__ import annotations

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
