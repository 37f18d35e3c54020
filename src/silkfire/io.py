"""Reading and writing record files: JSONL or a JSON list, with errors that name file and line."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any


class RecordFileError(ValueError):
    """A record file could not be read; the message names the file, the line/record and what is wrong."""


def iter_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the records of a JSONL file or a file holding one JSON list of objects.

    The format is sniffed from the first non-blank character (``[`` means a JSON list). A line that is
    not valid JSON, or a record that is not an object, raises :class:`RecordFileError` naming the file and
    the 1-based line (JSONL) or record index (JSON list).
    """
    path = Path(path)
    if not path.is_file():
        raise RecordFileError(f"{path}: no such file")
    with path.open("r", encoding="utf-8") as handle:
        head = handle.read(4096).lstrip()
    if head.startswith("["):
        yield from _iter_json_list(path)
    else:
        yield from _iter_jsonl(path)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSONL / JSON-list file (see :func:`iter_records`)."""
    return list(iter_records(path))


def _iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("r", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise RecordFileError(
                    f"{path}:{line_number}: not valid JSON ({error.msg} at column {error.colno}); "
                    "fix or remove the line"
                ) from error
            if not isinstance(record, dict):
                raise RecordFileError(
                    f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}"
                )
            yield record


def _iter_json_list(path: Path) -> Iterator[dict[str, Any]]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RecordFileError(
            f"{path}:{error.lineno}: not valid JSON ({error.msg} at column {error.colno})"
        ) from error
    if not isinstance(records, list):
        raise RecordFileError(f"{path}: expected a JSON list of objects or JSONL")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise RecordFileError(
                f"{path}: record {index}: expected a JSON object, got {type(record).__name__}"
            )
        yield record


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any]]) -> int:
    """Write records as JSONL (UTF-8, one compact object per line, keys in insertion order). Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
            count += 1
    return count


def write_json(path: str | Path, payload: Any) -> None:
    """Write pretty, key-sorted JSON (stable diffs for DVC metrics and manifests)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def file_digest(path: str | Path, algorithm: str = "md5") -> str:
    """Hex digest of a file's bytes (md5 matches DVC's file hashes)."""
    digest = hashlib.new(algorithm)
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
