"""One pipeline run per workspace at a time.

Two runs in one DVC workspace would overwrite each other's outputs; DVC's own repo lock would stop the second one
only midway, with a cryptic error, after the first stages of both have interleaved. The flow takes this lock first
(an OS file lock, released when the process dies, so a crash never leaves the workspace locked) and either waits
for the running pipeline or refuses with a message saying who holds the workspace.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = Path(".silkfire") / "run.lock"


class WorkspaceBusy(RuntimeError):
    """Another Silkfire pipeline run holds this workspace."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, json.JSONDecodeError):
        return "another process"
    return f"pid {info.get('pid', '?')} (started {info.get('started', '?')}, {info.get('what', 'a pipeline run')})"


@contextmanager
def workspace_lock(root: Path, what: str = "a pipeline run", wait_seconds: float = 0.0,
                   poll_seconds: float = 1.0) -> Iterator[Path]:
    """Hold the workspace for the duration of the block; wait up to `wait_seconds`, then raise WorkspaceBusy."""
    path = root / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 -- held open for the lock's lifetime
    deadline = time.monotonic() + wait_seconds
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise WorkspaceBusy(
                        f"the workspace {root} is busy: {_holder(path)} is running the pipeline there. "
                        "Wait for it to finish (or pass wait_seconds), or use another clone of the project."
                    ) from None
                time.sleep(poll_seconds)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                 "what": what}))
        handle.flush()
        yield path
    finally:
        handle.close()  # closing releases the lock
