"""A persistent, crash-safe annotation cache: append-only JSONL keyed by a content hash.

One line per finished judge call: ``{"key": sha256, "id": record id, "model": judge model, "text": raw judge
reply, "prompt_tokens", "completion_tokens"}``. Lines are written and fsync'ed one at a time as replies arrive
(write-through), so a crash loses at most the call in flight; a torn last line (crash mid-write) is ignored on
load and the call is simply made again. The raw reply is stored (not the parsed ratings), so a parser fix
applies to cached annotations without paying again. Later lines win on duplicate keys.

:func:`annotation_key` = sha256 over (judge model, template version, prompt, image digest, responses).
"""

from __future__ import annotations

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
            with self.path.open("r", encoding="utf-8") as handle:
                for line in handle:
                    try:
                        entry = json.loads(line)
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
        """Append one entry and fsync it before returning."""
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                if handle.tell() > 0 and not self._ends_with_newline():
                    handle.write("\n")  # never glue a new entry onto a torn line
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            self._entries[entry["key"]] = entry

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"
