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
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CACHE_FILE = "annotations.jsonl"


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


class AnnotationCache:
    """Key -> cached entry, backed by ``<directory>/annotations.jsonl`` (created on first write)."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / CACHE_FILE
        self._entries: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.torn_lines = 0
        if self.path.is_file():
            with self.path.open("rb") as handle:
                fcntl.flock(handle, fcntl.LOCK_SH)  # no writer is half-way through an entry while we read
                data = handle.read()
            for line in data.split(b"\n"):  # not splitlines(): replies may hold U+2028 and the like
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line.decode("utf-8"))
                except ValueError:
                    self.torn_lines += 1  # a crash mid-write: the call is made again
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                    self._entries[entry["key"]] = entry

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> dict[str, Any] | None:
        return self._entries.get(key)

    def put(self, entry: dict[str, Any]) -> None:
        """Append one entry (under the file lock, in one write) and fsync it before returning."""
        data = (json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # other processes, and other instances in this one
                if os.fstat(fd).st_size > 0 and not self._ends_with_newline():
                    data = b"\n" + data  # never glue a new entry onto a torn line
                view = memoryview(data)
                while view:  # a short write continues where it stopped (still under the lock)
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)  # releases the lock
            self._entries[entry["key"]] = entry

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"
