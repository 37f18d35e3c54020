"""Record files as frames the gate can validate: one row per record, its source line, its field types.

A gate must report *every* problem of a file, so a broken JSON line does not stop loading here: the line
becomes a row whose ``__json__`` column holds the parse error (asserted by the suites like any other check).
JSONL is read line by line to keep the 1-based line numbers (``silkfire.io`` skips blank lines and stops at
the first bad one) and in chunks, so a file of a million records is derived without holding every record; a
JSON-list file is parsed whole and numbered by record.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from silkfire.io import is_json_list

try:  # orjson ships with prefect; the json module is the fallback
    import orjson

    _loads = orjson.loads
    _DecodeError: tuple[type[Exception], ...] = (orjson.JSONDecodeError,)
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads
    _DecodeError = (json.JSONDecodeError, UnicodeDecodeError)

LINE = "__line__"  # 1-based line (JSONL) or record number (JSON list) in the source file
JSON = "__json__"  # "ok", or why the line is not a JSON object
OK = "ok"
MISSING = "missing"  # type name of a key absent from a record

# Type names as they appear in the derived ``<field>__type`` columns (what the report shows).
_TYPE_NAMES = {str: "str", int: "int", float: "float", bool: "bool", list: "list", dict: "dict", type(None): "null"}


TYPE_SUFFIX = "__type"


def type_column(field: str) -> str:
    return f"{field}{TYPE_SUFFIX}"


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
    chunks = list(iter_record_chunks(path, chunk_size=1 << 30))
    if len(chunks) == 1:
        return chunks[0]
    first = chunks[0]  # an empty file gives one empty chunk; only a huge file gives several
    return LoadedRecords(
        first.path,
        tuple(record for chunk in chunks for record in chunk.records),
        tuple(line for chunk in chunks for line in chunk.lines),
        tuple(status for chunk in chunks for status in chunk.json_status),
        line_label=first.line_label,
    )


def iter_record_chunks(path: str | Path, chunk_size: int = 50_000) -> Iterator[LoadedRecords]:
    """The records of a file in chunks of at most ``chunk_size`` rows (at least one chunk, maybe empty).

    JSONL is parsed line by line (orjson when installed: 3-5x faster than json); a line that is not a JSON
    object becomes a row whose status says why (with its column), a blank line is skipped. A JSON list is
    parsed whole (a broken list cannot be read record by record: the chunk then carries ``error``); an
    item that is not an object becomes a failing row like a bad JSONL line.
    """
    path = Path(path)
    if not path.is_file():
        yield LoadedRecords(path, (), (), (), error=f"{path}: no such file (did the producing stage run?)")
        return
    if is_json_list(path):
        yield from _json_list_chunks(path, chunk_size)
        return
    yield from _jsonl_chunks(path, chunk_size)


_BOM = b"\xef\xbb\xbf"


def parse_json(raw: bytes | str) -> tuple[Any, str]:
    """(value, "ok") or (None, why it is not JSON): the one parser of the gate (orjson when installed)."""
    try:
        return _loads(raw), OK
    except _DecodeError as error:
        return None, _why_not_json(raw, error)
    except (ValueError, RecursionError) as error:  # the json fallback: a 4300+ digit integer, deep nesting
        return None, f"not valid JSON ({type(error).__name__}: {error})"[:300]


def _why_not_json(raw: bytes | str, error: Exception) -> str:
    """Why a line is not JSON, with its column and (when it can be seen) the field it is in."""
    from silkfire.io import field_near

    data = raw.encode("utf-8", errors="surrogatepass") if isinstance(raw, str) else raw
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as bad:  # say so, where, and in which field (orjson says "column 1" here)
        near = field_near(data[:bad.start].decode("utf-8", errors="replace"), 10**9)
        return f"not valid UTF-8 (byte 0x{data[bad.start]:02x} at column {bad.start + 1}){near}"
    msg, pos = getattr(error, "msg", None), getattr(error, "pos", None)
    if msg is None or pos is None:
        return f"not valid JSON ({error})"
    text = data.decode("utf-8")
    near = field_near(text, min(pos, len(text)))
    if "surrogates not allowed" in msg:
        return f"not valid JSON (an unpaired surrogate escape such as \\ud800: not valid Unicode text){near}"
    colno = pos + 1  # not error.colno: a JSONL line ends with its newline, which starts a "line 2"
    if pos >= len(raw.rstrip()):  # the parser ran off the end: the usual sign of a write cut short
        return f"not valid JSON (the line ends before the record does: truncated? {msg} at column {colno}){near}"
    where = f"column {colno}" if msg.endswith(" at") else f"at column {colno}"
    return f"not valid JSON ({msg} {where}){near}"


def record_status(raw: bytes) -> tuple[dict[str, Any], str]:
    value, why = parse_json(raw)
    if why != OK:
        return {}, why
    if not isinstance(value, dict):
        return {}, f"not a JSON object ({_TYPE_NAMES.get(type(value), type(value).__name__)})"
    return value, OK


def _jsonl_chunks(
    path: Path, chunk_size: int, start: int = 0, end: int | None = None, seen: list[int] | None = None
) -> Iterator[LoadedRecords]:
    """JSONL rows from byte ``start`` (a line start) up to ``end``; lines numbered from 1 at ``start``.

    ``seen`` (a one-item list) receives the number of physical lines read, blank ones included, so a caller
    reading a file in blocks can turn block-relative line numbers into file line numbers.
    """
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    status: list[str] = []
    emitted = False
    number = 0
    position = start
    with path.open("rb") as handle:
        handle.seek(start)
        for number, raw in enumerate(handle, start=1):
            position += len(raw)
            if number == 1 and start == 0 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            if raw.strip():
                record, why = record_status(raw)
                records.append(record)
                lines.append(number)
                status.append(why)
                if len(records) >= chunk_size:
                    yield LoadedRecords(path, tuple(records), tuple(lines), tuple(status))
                    emitted = True
                    records, lines, status = [], [], []
            if end is not None and position >= end:
                break
    if seen is not None:
        seen[:] = [number]
    if records or not emitted:
        yield LoadedRecords(path, tuple(records), tuple(lines), tuple(status))


def jsonl_blocks(path: str | Path, block_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges (start, end) of about ``block_bytes`` covering a JSONL file, each starting at a line start."""
    path = Path(path)
    size = path.stat().st_size
    bounds = [0]
    with path.open("rb") as handle:
        position = block_bytes
        while position < size:
            handle.seek(position)
            handle.readline()  # move to the start of the next line
            boundary = handle.tell()
            if boundary >= size:
                break
            bounds.append(boundary)
            position = boundary + block_bytes
    bounds.append(size)
    return list(zip(bounds[:-1], bounds[1:]))


def iter_jsonl_block(
    path: str | Path, start: int, end: int, chunk_size: int, seen: list[int] | None = None
) -> Iterator[LoadedRecords]:
    """The rows of one block of a JSONL file (see :func:`jsonl_blocks`), lines numbered from 1 in the block."""
    yield from _jsonl_chunks(Path(path), chunk_size, start, end, seen)


def is_json_list(path: str | Path) -> bool:
    with Path(path).open("rb") as handle:
        head = handle.read(4096)
    if head.startswith(_BOM):
        head = head[len(_BOM):]
    return head.lstrip().startswith(b"[")


def _json_list_chunks(path: Path, chunk_size: int) -> Iterator[LoadedRecords]:
    data = path.read_bytes()
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    try:
        items = _loads(data)
    except (*_DecodeError, ValueError, RecursionError) as error:
        yield LoadedRecords(path, (), (), (), line_label="record", error=_list_error(path, data, error))
        return
    del data
    if not isinstance(items, list):
        yield LoadedRecords(path, (), (), (), line_label="record", error=f"{path}: expected a JSON list of objects "
                            "or JSONL")
        return
    for start in range(0, max(len(items), 1), chunk_size):
        part = items[start : start + chunk_size]
        status = tuple(
            OK if isinstance(item, dict) else f"not a JSON object ({_TYPE_NAMES.get(type(item), type(item).__name__)})"
            for item in part
        )
        records = tuple(item if isinstance(item, dict) else {} for item in part)
        numbers = tuple(range(start + 1, start + len(part) + 1))
        yield LoadedRecords(path, records, numbers, status, line_label="record")


def _list_error(path: Path, data: bytes, error: Exception) -> str:
    """``FILE:LINE: why`` for a JSON-list file that cannot be parsed (the line of the bad byte or position)."""
    from silkfire.io import field_near

    try:
        data.decode("utf-8")
    except UnicodeDecodeError as bad:
        line = data.count(b"\n", 0, bad.start) + 1
        column = bad.start - (data.rfind(b"\n", 0, bad.start) + 1) + 1
        near = field_near(data[:bad.start].decode("utf-8", errors="replace"), 10**9)
        return (f"{path}:{line}: not valid UTF-8 (byte 0x{data[bad.start]:02x} at column {column}){near}; "
                "the file must be UTF-8 encoded")
    lineno, colno = getattr(error, "lineno", "?"), getattr(error, "colno", "?")
    msg = str(getattr(error, "msg", None) or error)
    if "surrogates not allowed" in msg:
        msg = "an unpaired surrogate escape such as \\ud800: not valid Unicode text"
    pos = getattr(error, "pos", None)
    near = field_near(data[:pos].decode("utf-8", errors="replace"), 10**9) if isinstance(pos, int) else ""
    msg = msg[:-3] if msg.endswith(" at") else msg
    return f"{path}:{lineno}: not valid JSON ({msg} at column {colno}){near}; fix the file or write it as JSONL"


def iter_raw_records(path: str | Path) -> Iterator[tuple[int, bytes | None, Any]]:
    """(line, raw bytes or None, parsed record or None) for every row of a file, in order; for the filter pass.

    JSONL rows carry their raw line (copied verbatim to the clean file); JSON-list rows carry the parsed item.
    """
    path = Path(path)
    with path.open("rb") as handle:
        head = handle.read(4096)
    if head.startswith(_BOM):
        head = head[len(_BOM):]
    if head.lstrip().startswith(b"["):
        data = path.read_bytes()
        items = _loads(data[len(_BOM):] if data.startswith(_BOM) else data)
        for number, item in enumerate(items, start=1):
            yield number, None, item
        return
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            if raw.strip():
                yield number, raw, None


def records_frame(
    loaded: LoadedRecords, schema: Mapping[str, str | Sequence[str]], keep: Collection[str] | None = None
) -> pd.DataFrame:
    """One row per record: ``__line__``, ``__json__``, every schema field and its ``<field>__type``.

    ``schema`` maps a field to the type name(s) it may have ("str", "int", "float", "bool", "list", "dict",
    "null", "missing" for an optional key, or "text": a string that is not empty or blank, reported as "blank"
    otherwise). A value of another type (or a missing key) is replaced by None in the field column, so value
    checks (sets, ranges, lengths) only see well-typed values; the ``__type`` column names what was there
    ("missing", "int", ...) for the type check to report. Rows of broken lines have None everywhere but
    ``__json__``, so only the JSON check reports them. ``keep`` limits the value columns to those fields (the
    others get their ``__type`` column only: big nested values need not stay in memory).
    """
    columns: dict[str, list[Any]] = {LINE: list(loaded.lines), JSON: list(loaded.json_status)}
    names = _TYPE_NAMES
    # comprehensions, not one loop with appends: this runs for every field of every record (a million FIRE
    # dialogues x 10 fields), and a comprehension is 2-3x faster
    rows = [record if status == OK else None for record, status in zip(loaded.records, loaded.json_status)]
    for name, allowed in schema.items():
        allowed_set = {allowed} if isinstance(allowed, str) else set(allowed)
        raw = [_BROKEN if record is None else record.get(name, _ABSENT) for record in rows]
        types = [
            None if value is _BROKEN else MISSING if value is _ABSENT else names.get(type(value)) or type(value).__name__
            for value in raw
        ]
        if "text" in allowed_set:  # a string with a non-space character is "text", else "blank"
            types = [("text" if value and not value.isspace() else "blank") if kind == "str" else kind
                     for kind, value in zip(types, raw)]
        if keep is None or name in keep:
            columns[name] = [value if kind in allowed_set and kind not in ("null", MISSING) else None
                             for value, kind in zip(raw, types)]
        columns[type_column(name)] = types
    # Type names and JSON statuses are a handful of strings: categoricals (cheap to build, pickle, concatenate
    # and filter). Values stay objects: lists/dicts and mixed values as they are, no Arrow string inference.
    data: dict[str, Any] = {LINE: np.asarray(columns[LINE], dtype="int64")}
    for name, values in columns.items():
        if name == LINE:
            continue
        if name == JSON or name.endswith(TYPE_SUFFIX):
            data[name] = pd.Categorical(values)
        else:
            data[name] = pd.Series(values, dtype=object)
    return pd.DataFrame(data)


_ABSENT = object()  # a key the record does not have
_BROKEN = object()  # a row whose line is not a JSON object


def schema_allows(allowed: str | Sequence[str], kinds: Sequence[str]) -> bool:
    allowed_set = {allowed} if isinstance(allowed, str) else set(allowed)
    return bool(allowed_set & set(kinds))


# ---- derived columns (a kind's derive functions and the columnar reader build them) ------------------------------
TOKENS = "__tokens"  # suffix of token-count columns; every such column gets the token-bounds check
NUMERIC_SUFFIXES = (TOKENS, "__rows", "__count")
VALUE_SUFFIXES = ("__value", "__path")


def derived_column(name: str, values: list[Any]) -> Any:
    """A derived column in the dtype GX filters fastest: counts as floats, texts/paths as objects, statuses
    (a handful of distinct strings) as categoricals."""
    if name.endswith(NUMERIC_SUFFIXES):
        return pd.Series(values, dtype="float64")
    if name.endswith(VALUE_SUFFIXES):
        return pd.Series(values, dtype=object)
    return pd.Categorical(values)
