"""Record files as frames the gate can validate: one row per record, its source line, its field types.

A gate must report *every* problem of a file, so a broken JSON line does not stop loading here: the line
becomes a row whose ``__json__`` column holds the parse error (asserted by the suites like any other check).
JSONL is read line by line to keep the 1-based line numbers (``silkfire.io`` skips blank lines and stops at
the first bad one); a JSON-list file goes through ``silkfire.io.read_records`` and is numbered by record.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from silkfire.io import RecordFileError, read_records

LINE = "__line__"  # 1-based line (JSONL) or record number (JSON list) in the source file
JSON = "__json__"  # "ok", or why the line is not a JSON object
OK = "ok"
MISSING = "missing"  # type name of a key absent from a record

# Type names as they appear in the derived ``<field>__type`` columns (what the report shows).
_TYPE_NAMES = {str: "str", int: "int", float: "float", bool: "bool", list: "list", dict: "dict", type(None): "null"}


def type_column(field: str) -> str:
    return f"{field}__type"


@dataclass(frozen=True)
class LoadedRecords:
    """The records of one file, aligned with their line numbers and JSON status.

    ``records[i]`` is ``{}`` where ``json_status[i]`` is not "ok". ``error`` is set when the file as a whole
    could not be read (missing, not a JSON list); then there are no rows.
    """

    path: Path
    records: tuple[dict[str, Any], ...]
    lines: tuple[int, ...]
    json_status: tuple[str, ...]
    line_label: str = "line"  # "record" for JSON-list files
    error: str | None = None


def load_records(path: str | Path) -> LoadedRecords:
    """Read a JSONL or JSON-list file without stopping at the first bad line (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        return LoadedRecords(path, (), (), (), error=f"{path}: no such file (did the producing stage run?)")
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        head = handle.read(4096).lstrip()
    if head.startswith("["):
        try:
            records = read_records(path)
        except RecordFileError as error:
            return LoadedRecords(path, (), (), (), line_label="record", error=str(error))
        numbers = tuple(range(1, len(records) + 1))
        return LoadedRecords(path, tuple(records), numbers, (OK,) * len(records), line_label="record")

    records_: list[dict[str, Any]] = []
    lines: list[int] = []
    status: list[str] = []
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                where = f"column {error.colno}" if error.msg.endswith(" at") else f"at column {error.colno}"
                record, why = {}, f"not valid JSON ({error.msg} {where})"
            else:
                why = OK
                if not isinstance(record, dict):
                    record, why = {}, f"not a JSON object ({type(record).__name__})"
            records_.append(record)
            lines.append(number)
            status.append(why)
    return LoadedRecords(path, tuple(records_), tuple(lines), tuple(status))


def records_frame(loaded: LoadedRecords, schema: Mapping[str, str | Sequence[str]]) -> pd.DataFrame:
    """One row per record: ``__line__``, ``__json__``, every schema field and its ``<field>__type``.

    ``schema`` maps a field to the type name(s) it may have ("str", "int", "float", "bool", "list", "dict",
    "null", or "text": a string that is not empty or blank, reported as "blank" otherwise). A value
    of another type (or a missing key) is replaced by None in the field column, so value
    checks (sets, ranges, lengths) only see well-typed values; the ``__type`` column names what was there
    ("missing", "int", ...) for the type check to report. Rows of broken lines have None everywhere but
    ``__json__``, so only the JSON check reports them.
    """
    columns: dict[str, list[Any]] = {LINE: list(loaded.lines), JSON: list(loaded.json_status)}
    for name, allowed in schema.items():
        allowed_set = {allowed} if isinstance(allowed, str) else set(allowed)
        text = "text" in allowed_set
        values: list[Any] = []
        types: list[str | None] = []
        for record, status in zip(loaded.records, loaded.json_status):
            if status != OK:
                values.append(None)
                types.append(None)
                continue
            if name not in record:
                values.append(None)
                types.append(MISSING)
                continue
            value = record[name]
            kind = _TYPE_NAMES.get(type(value), type(value).__name__)
            if text and kind == "str":
                kind = "text" if value.strip() else "blank"
            types.append(kind)
            values.append(value if kind in allowed_set and kind != "null" else None)
        columns[name] = values
        columns[type_column(name)] = types
    frame = pd.DataFrame(columns)
    # Object dtype keeps lists/dicts and mixed values as they are (pandas would coerce some columns).
    for name in schema:
        if schema_allows(schema[name], ("list", "dict")):
            frame[name] = pd.Series(columns[name], dtype=object)
    return frame


def schema_allows(allowed: str | Sequence[str], kinds: Sequence[str]) -> bool:
    allowed_set = {allowed} if isinstance(allowed, str) else set(allowed)
    return bool(allowed_set & set(kinds))
