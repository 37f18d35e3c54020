"""A persistent, crash-safe annotation cache: append-only JSONL keyed by a content hash.

One line per finished judge call: ``{"key": sha256, "id": record id, "model": judge model, "text": raw judge
reply, "prompt_tokens", "completion_tokens"}``. Lines are written and fsync'ed one at a time as replies arrive
(write-through), so a crash loses at most the call in flight; a torn last line (crash mid-write) is ignored on
load and the call is simply made again. The raw reply is stored (not the parsed ratings), so a parser fix
applies to cached annotations without paying again. Later lines win on duplicate keys.

Several writers at once (fan-out shards in threads, processes or on machines sharing the folder): each append
holds an exclusive ``flock`` on the file and goes out as one ``O_APPEND`` write, so entries never interleave
and the torn-line check sees the true end of the file; loading holds a shared lock. Each writer only knows the
entries of its own shard (plus what was on disk when it started); a later run sees them all.

:func:`annotation_key` = sha256 over (judge model, template version, prompt, image digest, responses).

Only answers are cached. A reply that does not parse into ratings (a refusal, a truncated or off-format text)
is not an answer: the caller appends it with :meth:`AnnotationCache.put_unparsable` to a side record,
``<directory>/unparsable.jsonl`` (same line format, same append/flock/fsync discipline), and asks again on the
next run; :meth:`AnnotationCache.attempts` counts the unparsable replies a key has had, across runs, so the
caller can stop after a bound (and say so). A lookup with ``readable=`` treats a cached entry whose text does not
parse as a miss, so a cache written before this rule (which held refusals as answers) heals on the next run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

CACHE_FILE = "annotations.jsonl"
UNPARSABLE_FILE = "unparsable.jsonl"  # replies that did not parse: one line per attempt


def image_digest(path: str | Path | None) -> str:
    """sha256 of an image's bytes ("" when there is no image file)."""
    if path is None or not Path(path).is_file():
        return ""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def annotation_key(model: str, template_version: str, prompt: str, image_sha: str, responses: Sequence[str]) -> str:
    payload = json.dumps({"model": model, "template": template_version, "prompt": prompt, "image": image_sha,
                          "responses": list(responses)}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _load(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The entries of a JSONL log (under a shared lock) and how many torn lines were skipped."""
    entries: list[dict[str, Any]] = []
    torn = 0
    if not path.is_file():
        return entries, torn
    with path.open("rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)  # no writer is half-way through an entry while we read
        data = handle.read()
    for line in data.split(b"\n"):  # not splitlines(): replies may hold U+2028 and the like
        if not line.strip():
            continue
        try:
            entry = json.loads(line.decode("utf-8"))
        except ValueError:
            torn += 1  # a crash mid-write: the call is made again
            continue
        if isinstance(entry, dict) and isinstance(entry.get("key"), str):
            entries.append(entry)
    return entries, torn


def _append(path: Path, entry: dict[str, Any]) -> None:
    """Append one entry to a JSONL log under an exclusive flock, in one O_APPEND write, fsync'ed."""
    data = (json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # other processes, and other instances in this one
        if os.fstat(fd).st_size > 0 and not _ends_with_newline(path):
            data = b"\n" + data  # never glue a new entry onto a torn line
        view = memoryview(data)
        while view:  # a short write continues where it stopped (still under the lock)
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


class AnnotationCache:
    """Key -> cached entry, backed by ``<directory>/annotations.jsonl`` (created on first write); unparsable
    replies in ``<directory>/unparsable.jsonl`` (see the module docstring)."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / CACHE_FILE
        self.unparsable_path = Path(directory) / UNPARSABLE_FILE
        self._entries: dict[str, dict[str, Any]] = {}
        self._unparsable: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        entries, self.torn_lines = _load(self.path)
        for entry in entries:
            self._entries[entry["key"]] = entry  # later lines win
        rejected, torn = _load(self.unparsable_path)
        self.torn_lines += torn
        for entry in rejected:
            self._unparsable.setdefault(entry["key"], []).append(entry)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str, readable: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any] | None:
        """The cached entry, or None; with ``readable``, an entry it rejects (a reply cached before unparsable
        replies were kept out) is a miss too."""
        entry = self._entries.get(key)
        if entry is not None and readable is not None and not readable(entry):
            return None
        return entry

    def put(self, entry: dict[str, Any]) -> None:
        """Append one answer (under the file lock, in one write) and fsync it before returning."""
        with self._lock:
            _append(self.path, entry)
            self._entries[entry["key"]] = entry

    def put_unparsable(self, entry: dict[str, Any]) -> None:
        """Record one reply that did not parse (same format as :meth:`put`); it is not an answer."""
        with self._lock:
            _append(self.unparsable_path, entry)
            self._unparsable.setdefault(entry["key"], []).append(entry)

    def attempts(self, key: str) -> int:
        """How many unparsable replies ``key`` has had (all runs whose side record this instance saw)."""
        return len(self._unparsable.get(key, ()))

    def last_unparsable(self, key: str) -> dict[str, Any] | None:
        """The latest unparsable reply recorded for ``key``, or None."""
        replies = self._unparsable.get(key)
        return replies[-1] if replies else None
