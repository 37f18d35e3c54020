"""One writer per workspace at a time, and a clean slate after a crash.

Two runs in one DVC workspace would overwrite each other's outputs, and `silkfire params` during a run would change
the config under a running stage. Every command that writes the workspace (`run`, `stage`, `params`, `sweep`;
DVC's stage commands are `silkfire stage`) takes this lock first: an OS file lock (`flock`), released when the
process dies, so a crash never leaves the workspace locked. The refusal is one line, before anything heavy is
imported or started.

Processes a holder starts (DVC's `silkfire stage` under `silkfire run`) inherit $SILKFIRE_WORKSPACE_TOKEN and
join the holder's lock instead of waiting for it; each member holds a shared lock on `members.lock`, so a new
holder can tell when processes of a dead run are still alive (it refuses rather than run beside them).

Crash hygiene: the holder's record (pid, token, its Prefect flow run) stays in `run.lock` while it runs and is
cleared when it ends. A holder that finds a record there knows its predecessor died (kill -9, OOM, power): before
anything else it marks that run's MLflow runs KILLED (every run tagged with its token) and queues its Prefect flow
run, which the next flow marks Crashed (:func:`crash_dead_flow_runs`; Prefect's API is up only inside a flow).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

LOCK_DIR = Path(".silkfire")
LOCK_FILE = LOCK_DIR / "run.lock"
MEMBERS_FILE = LOCK_DIR / "members.lock"
DEAD_FLOW_RUNS = LOCK_DIR / "dead_flow_runs.json"
TOKEN_ENV = "SILKFIRE_WORKSPACE_TOKEN"
TOKEN_TAG = "silkfire.workspace_token"  # on every MLflow run opened under the lock: how a dead run's are found


class WorkspaceBusy(RuntimeError):
    """Another Silkfire command holds this workspace."""


def _read(handle: TextIO) -> dict[str, Any]:
    handle.seek(0)
    text = handle.read()
    try:
        info = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {"what": "an unknown process (unreadable lock record)"}
    return info if isinstance(info, dict) else {}


def _describe(info: dict[str, Any]) -> str:
    return f"pid {info.get('pid', '?')} (started {info.get('started', '?')}, {info.get('what', 'a pipeline run')})"


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def current_token() -> str | None:
    """The token of the lock this process holds or joined (None outside any)."""
    return os.environ.get(TOKEN_ENV) or None


def _joined(root: Path) -> bool:
    """True when this process was started by the live holder of the lock (same token in its record)."""
    token = current_token()
    path = root / LOCK_FILE
    if not token or not path.is_file():
        return False
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(info, dict) and info.get("token") == token and _pid_alive(info.get("pid"))


@contextmanager
def _member(root: Path) -> Iterator[None]:
    path = root / MEMBERS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)  # released when this process ends, however it ends
        yield


def _orphans_alive(root: Path) -> bool:
    path = root / MEMBERS_FILE
    if not path.is_file():
        return False
    with open(path, "a", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


@contextmanager
def workspace_lock(root: Path, what: str = "a pipeline run", wait_seconds: float = 0.0,
                   poll_seconds: float = 1.0) -> Iterator[Path]:
    """Hold the workspace for the block (or join the holder that started this process); wait up to
    `wait_seconds` for another holder, then raise :class:`WorkspaceBusy` naming it."""
    root = Path(root)
    path = root / LOCK_FILE
    if _joined(root):
        with _member(root):
            yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 -- held open for the lock's lifetime
    deadline = time.monotonic() + wait_seconds
    previous_token = os.environ.get(TOKEN_ENV)
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise WorkspaceBusy(
                        f"the workspace {root} is busy: {_describe(_read(handle))} is writing it. Wait for it to "
                        "finish, or use another clone of the project."
                    ) from None
                time.sleep(poll_seconds)
        dead = _read(handle)
        if dead:  # a holder's record is cleared when it ends: this one died holding the workspace
            if _orphans_alive(root):
                raise WorkspaceBusy(
                    f"the workspace {root} is busy: {_describe(dead)} died, but processes it started (a DVC stage) "
                    "still run there. Wait for them to end or kill them (`pkill -f 'silkfire stage'`), then retry."
                )
            recover_dead_holder(root, dead)
        token = uuid.uuid4().hex
        _write(handle, {"pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "what": what,
                        "token": token})
        os.environ[TOKEN_ENV] = token  # processes started from here on join this lock
        try:
            with _member(root):
                yield path
        finally:
            # The holder ends here, normally or through an exception (a failed gate or stage): its MLflow and
            # Prefect runs were closed as FAILED on the way out, so there is nothing to recover. Only a holder that
            # never reaches this line (SIGKILL, power loss) leaves its record for the next one.
            _write(handle, {})
    finally:
        if previous_token is None:
            os.environ.pop(TOKEN_ENV, None)
        else:
            os.environ[TOKEN_ENV] = previous_token
        handle.close()  # closing releases the lock


def _write(handle: TextIO, info: dict[str, Any]) -> None:
    handle.seek(0)
    handle.truncate()
    if info:
        handle.write(json.dumps(info))
    handle.flush()
    os.fsync(handle.fileno())


def note_holder(root: Path, **facts: str) -> None:
    """Add facts (e.g. the Prefect flow run id) to the record of the lock this process holds or joined."""
    path = Path(root) / LOCK_FILE
    token = current_token()
    if not token or not path.is_file():
        return
    with open(path, "r+", encoding="utf-8") as handle:
        info = _read(handle)
        if info.get("token") != token:
            return
        _write(handle, {**info, **facts})


# ---- crash recovery ---------------------------------------------------------------------------------------------
def recover_dead_holder(root: Path, dead: dict[str, Any]) -> dict[str, int]:
    """Close what a dead holder left open: its MLflow runs -> KILLED now, its Prefect flow run queued for the
    next flow (-> Crashed). Returns counts; says what it did on stderr."""
    import sys

    note = (f"{_describe(dead)} died without closing this run; marked by pid {os.getpid()} at "
            f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}")
    killed = close_dead_mlflow_runs(root, str(dead.get("token") or ""), note)
    queued = 0
    if flow_run := dead.get("prefect_flow_run"):
        pending = _load_dead_flow_runs(root)
        pending[str(flow_run)] = note
        _save_dead_flow_runs(root, pending)
        queued = 1
    print(f"silkfire: {_describe(dead)} died holding the workspace: {killed} MLflow run(s) marked KILLED"
          + (", its Prefect flow run will be marked Crashed by the next flow run" if queued else ""),
          file=sys.stderr)
    return {"mlflow_runs_killed": killed, "prefect_flow_runs_queued": queued}


def close_dead_mlflow_runs(root: Path, token: str, note: str) -> int:
    """Mark KILLED every RUNNING MLflow run tagged with `token` (none when the project has no store yet)."""
    from silkfire.tracking.store import MLRUNS_DIR, tracking_uri

    uri = tracking_uri(root)
    if not token or (uri.startswith("sqlite:") and not (root / MLRUNS_DIR / "mlflow.db").is_file()):
        return 0
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    if not experiments:
        return 0
    runs = client.search_runs(experiments, filter_string=f"tags.`{TOKEN_TAG}` = '{token}' and "
                              "attributes.status = 'RUNNING'", run_view_type=ViewType.ALL, max_results=10_000)
    for run in runs:
        client.set_tag(run.info.run_id, "silkfire.killed", note)
        client.set_terminated(run.info.run_id, "KILLED")
    return len(runs)


def _load_dead_flow_runs(root: Path) -> dict[str, str]:
    path = Path(root) / DEAD_FLOW_RUNS
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_dead_flow_runs(root: Path, pending: dict[str, str]) -> None:
    path = Path(root) / DEAD_FLOW_RUNS
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(pending, indent=1), encoding="utf-8")
    tmp.replace(path)


def crash_dead_flow_runs(root: Path) -> int:
    """Inside a flow (Prefect's API is up): mark the queued flow runs of dead holders Crashed. Returns how many."""
    pending = _load_dead_flow_runs(root)
    if not pending:
        return 0
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    done = 0
    with get_client(sync_client=True) as client:
        for flow_run_id, note in list(pending.items()):
            try:
                run = client.read_flow_run(uuid.UUID(flow_run_id))
                if run.state is None or not run.state.is_final():
                    client.set_flow_run_state(run.id, Crashed(message=note), force=True)
                    done += 1
            except Exception as error:  # noqa: BLE001 -- another server, or gone: nothing left to close
                print(f"silkfire: flow run {flow_run_id} of a dead holder not marked Crashed ({error})")
            pending.pop(flow_run_id)
    _save_dead_flow_runs(root, pending)
    return done
