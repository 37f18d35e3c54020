"""Reading and writing record files: JSONL or a JSON list, with errors that name file and line."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any


class RecordFileError(ValueError):
    """A record file could not be read; the message names the file, the line/record and what is wrong."""


class RecordErrors(RecordFileError):
    """Several records of one file are bad: every message (file, line/record, field), the first ``shown`` in the
    text. ``messages`` holds them all."""

    def __init__(self, path: str | Path, messages: Sequence[str], shown: int = 20) -> None:
        self.path, self.messages = Path(path), list(messages)
        if len(self.messages) == 1:
            text = self.messages[0]
        else:
            more = len(self.messages) - shown
            text = (f"{path}: {len(self.messages)} bad records:\n  " + "\n  ".join(self.messages[:shown])
                    + (f"\n  ... and {more} more" if more > 0 else ""))
        super().__init__(text)


_BOM = b"\xef\xbb\xbf"


def is_json_list(path: Path) -> bool:
    """True when the file holds one JSON list (its first non-blank byte, after a UTF-8 BOM, is '['), else JSONL."""
    with Path(path).open("rb") as handle:
        head = handle.read(4096)
    if head.startswith(_BOM):
        head = head[len(_BOM):]
    return head.lstrip().startswith(b"[")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # a \ud800-\udfff escape: maybe an unpaired surrogate
_KEY = re.compile(r'"((?:[^"\\]|\\.){1,80})"\s*:')


def iter_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the records of a JSONL file or a file holding one JSON list of objects.

    The format is sniffed from the first non-blank character (``[`` means a JSON list); a UTF-8 byte order mark
    is skipped. A line that is not UTF-8, not valid JSON (or JSON Python cannot hold: a number of more than 4300
    digits, nesting too deep, an unpaired surrogate), or a record that is not an object, raises
    :class:`RecordFileError` naming the file and the 1-based line (JSONL) or record index (JSON list).
    """
    for _, record in iter_located(path):
        yield record


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSONL / JSON-list file (see :func:`iter_records`)."""
    return list(iter_records(path))


def iter_located(path: str | Path, errors: list[str] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, record)`` for every record of a file (as :func:`iter_records`): ``where`` is ``"FILE:LINE"``
    (JSONL, 1-based) or ``"FILE: record N"`` (JSON list, 0-based), the prefix of any message about the record.

    With ``errors`` (a list), an unreadable JSONL line appends its message there and reading goes on with the
    next line (a broken JSON list is one error: nothing can be read from it); without, it raises
    :class:`RecordFileError`.
    """
    path = Path(path)
    if not path.is_file():
        _fail(errors, f"{path}: no such file")
        return
    if is_json_list(path):
        yield from _iter_json_list(path, errors)
    else:
        yield from _iter_jsonl(path, errors)


def read_located(path: str | Path) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """Every readable record with its ``where`` (see :func:`iter_located`) and the messages of unreadable lines."""
    errors: list[str] = []
    return list(iter_located(path, errors)), errors


def checked_records(path: str | Path, located: Sequence[tuple[str, dict[str, Any]]], errors: list[str],
                    check: Callable[[int, dict[str, Any]], Any], nothing: str) -> list[dict[str, Any]]:
    """The records of a file once every one passed ``check(index, record)``: whatever one record raises is that
    record's error (``where: why``), all are reported at once (:class:`RecordErrors`, after the unreadable lines
    already in ``errors``); no record at all is an error (``"{path}: {nothing}"``)."""
    for index, (where, record) in enumerate(located):
        try:
            check(index, record)
        except Exception as error:  # noqa: BLE001 -- whatever one record does, it is that record's error
            errors.append(f"{where}: {error}")
    if errors:
        raise RecordErrors(path, errors)
    if not located:
        raise RecordFileError(f"{path}: {nothing}")
    return [record for _, record in located]


def _fail(errors: list[str] | None, message: str) -> None:
    if errors is None:
        raise RecordFileError(message)
    errors.append(message)


def field_near(text: str, position: int) -> str:
    """``' (near field "x")'``: the last key written before ``position`` of a JSON text (the field a bad byte or
    a syntax error is in, or just after), or "" when none is in sight. A hint for the reader, not a parse."""
    position = min(position, len(text))
    keys = list(_KEY.finditer(text, max(0, position - 4000), position))
    return f' (near field "{keys[-1].group(1)}")' if keys else ""  # JSON's quotes: reports repr() it in '...'


def _decode(data: bytes, path: Path, base_line: int | None) -> tuple[str | None, str]:
    """(text, "") or (None, why): UTF-8 bytes of a line (``base_line``) or a whole file (None)."""
    try:
        return data.decode("utf-8"), ""
    except UnicodeDecodeError as error:
        line = base_line if base_line is not None else data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        text = data[:error.start].decode("utf-8", errors="replace")
        return None, (f"{path}:{line}: not valid UTF-8 (byte 0x{data[error.start]:02x} at column {column})"
                      f"{field_near(text, len(text))}; the file must be UTF-8 encoded")


def _parse(text: str, raw: bytes) -> tuple[Any, str]:
    """(value, "") or (None, why, without the location) for one JSON line."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        msg = error.msg[:-3] if error.msg.endswith(" at") else error.msg  # "Invalid control character at"
        near = field_near(text, error.pos)
        if error.pos >= len(text.rstrip()):
            return None, f"not valid JSON (the line ends before the record does: truncated? {msg}){near}"
        return None, f"not valid JSON ({msg} at column {error.colno}){near}"
    except RecursionError:
        return None, "not readable JSON (nested too deeply)"
    except ValueError as error:  # an integer of more than 4300 digits (sys.int_max_str_digits)
        return None, _too_long(text, error)
    if _SURROGATE_ESCAPE.search(raw):
        where = _unpaired_surrogate(value, "")
        if where is not None:
            return None, f"field {where or '(top level)'}: an unpaired surrogate escape (not valid Unicode text)"
    return value, ""


_LONG_NUMBER = re.compile(r"-?\d{4300,}")


def _too_long(text: str, error: ValueError) -> str:
    """Why Python's json refused a number (more digits than ``sys.int_max_str_digits``), and where."""
    match = _LONG_NUMBER.search(text)
    if match is None:
        return f"not readable JSON ({error})"
    column = match.start() - text.rfind(chr(10), 0, match.start())
    return (f"not readable JSON (a number of {len(match.group().lstrip('-'))} digits at column {column}: too long "
            f"to be a value){field_near(text, match.start())}")


def _unpaired_surrogate(value: Any, where: str) -> str | None:
    """The path of the first string holding an unpaired surrogate (lone \\ud800-\\udfff), else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _unpaired_surrogate(str(key), where) or _unpaired_surrogate(item, f"{where}.{key}" if where
                                                                                else str(key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _unpaired_surrogate(item, f"{where}[{index}]")
            if found is not None:
                return found
    return None


def _iter_jsonl(path: Path, errors: list[str] | None) -> Iterator[tuple[str, dict[str, Any]]]:
    name = str(path)
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if line_number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            if not raw.strip():
                continue
            text, why = _decode(raw, path, line_number)
            if text is None:
                _fail(errors, why)
                continue
            record, why = _parse(text, raw)
            if why:
                _fail(errors, f"{path}:{line_number}: {why}; fix or remove the line")
            elif not isinstance(record, dict):
                _fail(errors, f"{path}:{line_number}: expected a JSON object, got {_type_name(record)}")
            else:
                yield f"{name}:{line_number}", record


def _iter_json_list(path: Path, errors: list[str] | None) -> Iterator[tuple[str, dict[str, Any]]]:
    data = path.read_bytes()
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    text, why = _decode(data, path, None)
    if text is None:
        _fail(errors, why)
        return
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        msg = error.msg[:-3] if error.msg.endswith(" at") else error.msg
        _fail(errors, f"{path}:{error.lineno}: not valid JSON ({msg} at column {error.colno})"
                      f"{field_near(text, error.pos)}")
        return
    except RecursionError:
        _fail(errors, f"{path}: not readable JSON (nested too deeply)")
        return
    except ValueError as error:  # an integer too long for Python: find it to name the line
        match = _LONG_NUMBER.search(text)
        where = f"{path}:{text.count(chr(10), 0, match.start()) + 1}" if match else f"{path}"
        _fail(errors, f"{where}: {_too_long(text, error)}")
        return
    if not isinstance(records, list):
        _fail(errors, f"{path}: expected a JSON list of objects or JSONL")
        return
    surrogates = _SURROGATE_ESCAPE.search(data) is not None  # else no string can hold an unpaired one
    for index, record in enumerate(records):
        where = f"{path}: record {index}"
        if not isinstance(record, dict):
            _fail(errors, f"{where}: expected a JSON object, got {_type_name(record)}")
            continue
        if surrogates:
            field = _unpaired_surrogate(record, "")
            if field is not None:
                _fail(errors, f"{where}: field {field or '(top level)'}: an unpaired surrogate escape (not valid "
                              "Unicode text)")
                continue
        yield where, record


def _type_name(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", type(None): "null"}.get(type(value), type(value).__name__)


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
