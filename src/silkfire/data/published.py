"""The published data sets in their released layouts, read by real loaders, with embedded images made safe.

- lmms-eval MME (``lmms-lab/MME``): ``data/test-*-of-*.parquet`` with ``question_id``, ``image`` {bytes, path},
  ``question``, ``answer``, ``category`` -- pyarrow;
- VLFeedback (``MMInstruction/VLFeedback``): parquet with ``id``, ``prompt``, ``models``, ``completions``,
  ``img_path`` (+ ``image`` {bytes, path} when the images are embedded) -- pyarrow; or the JSONL export
  (``vlfeedback_80k.jsonl``) + ``merged_images/`` -- :mod:`silkfire.io`;
- FIRE-100K / FIRE-Bench (``PengxiangLi/FIRE``): ``FIRE-train-100K.json`` / ``FIRE-test.json``, JSON lists of
  dialogues; the images (from ~27 source sets) are not shipped -- :mod:`silkfire.io`;
- MMHal-Bench (``Shengcao1006/MMHal-Bench``): ``response_template.json`` (a JSON list) + ``images/`` (file name =
  the last part of ``image_src``) -- :mod:`silkfire.io`.

A parquet file (or a folder of parquet shards, read in name order) becomes records one row each, numbered from 1
("row N" in messages; several shards are numbered on, in name order). **Embedded images are data from elsewhere**:
their bytes are written to ``<data root>/extracted/<h[:2]>/<h>.<ext>``, ``h`` the SHA-256 of the bytes and
``ext`` sniffed from their first bytes -- never a name or path taken from the file (the ``path`` an HF image
struct carries is ignored) -- through a folder that must stay inside the root (no symlink out), by an exclusive
temporary file renamed into place. The record then names the image by that relative path, and every later read
goes through the one image path policy (:func:`silkfire.images.check_image`): the gate decodes it with its
pixel limit, models load it with ``load_image``. A row without image bytes, or with more than
:data:`silkfire.images.MAX_IMAGE_BYTES`, gets ``null`` for the image and the gate names the row and field.

Gates read JSONL: :func:`validate_published` converts a parquet file into ``<report dir>/converted/<stem>.jsonl``
(one line per row, so line N is row N) and reports problems against the parquet file with the label "row".
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from silkfire.io import RecordErrors, RecordFileError, read_located as read_located_json

PARQUET_MAGIC = b"PAR1"
PARQUET_SUFFIXES = (".parquet", ".pq")
EXTRACTED = "extracted"  # folder under the data root that holds images extracted from parquet bytes
CONVERTED = "converted"  # folder under a gate's report dir that holds a parquet file converted to JSONL
ROW = "row"
# record kind -> (the parquet column holding image bytes, the record field that names the extracted file)
IMAGE_COLUMNS: dict[str, tuple[str, str]] = {"mme": ("image", "image"), "vlfeedback": ("image", "img_path")}
MMHAL_IMAGE_DIR = "images"  # MMHal-Bench's image folder, beside response_template.json

_MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF87a", ".gif"), (b"GIF89a", ".gif"),
          (b"BM", ".bmp"))


# ---- parquet ---------------------------------------------------------------------------------------------------
def is_parquet(path: str | Path) -> bool:
    """Whether ``path`` is a parquet file (by suffix or magic bytes) or a folder holding parquet shards."""
    path = Path(path)
    if path.is_dir():
        return any(path.glob("*.parquet"))
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return True
    try:
        with path.open("rb") as handle:
            return handle.read(4) == PARQUET_MAGIC
    except OSError:
        return False


def parquet_files(path: str | Path) -> list[Path]:
    """The parquet file itself, or a folder's ``*.parquet`` shards in name order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise RecordFileError(f"{path}: a folder without *.parquet files")
        return files
    if not path.is_file():
        raise RecordFileError(f"{path}: no such file")
    return [path]


def parquet_columns(path: str | Path) -> list[str]:
    """The top-level column names of a parquet file (the first shard of a folder)."""
    import pyarrow.parquet as pq

    first = parquet_files(path)[0]
    try:
        return list(pq.ParquetFile(first).schema_arrow.names)
    except Exception as error:  # noqa: BLE001 -- pyarrow raises several types for a broken file
        raise RecordFileError(f"{first}: not a readable parquet file ({type(error).__name__}: {error})") from None


def parquet_rows(path: str | Path, columns: Sequence[str] | None = None,
                 batch_size: int = 256) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row number from 1, row)`` of a parquet file or folder of shards, read in batches with pyarrow; only
    ``columns`` (those present) when given. An unreadable file raises :class:`RecordFileError` naming it."""
    import pyarrow.parquet as pq

    number = 0
    for shard in parquet_files(path):
        try:
            handle = pq.ParquetFile(shard)
            names = handle.schema_arrow.names
            wanted = None if columns is None else [name for name in columns if name in names]
            for batch in handle.iter_batches(batch_size=batch_size, columns=wanted):
                for row in batch.to_pylist():
                    number += 1
                    yield number, row
        except RecordFileError:
            raise
        except Exception as error:  # noqa: BLE001 -- pyarrow raises several types for a broken file
            raise RecordFileError(f"{shard}: not a readable parquet file ({type(error).__name__}: {error})") from None


# ---- embedded images ---------------------------------------------------------------------------------------------
def image_bytes(value: Any) -> tuple[bytes | None, str]:
    """The bytes of an embedded image (an HF ``Image`` struct ``{bytes, path}`` or plain binary), or (None, why).
    A struct's ``path`` is never followed: a file of the published layout carries its image bytes."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, Mapping):
        raw = value.get("bytes")
        if raw is None:
            named = value.get("path")
            where = f" (it names path {str(named)[:80]!r}, which is not followed)" if named else ""
            return None, f"no image bytes{where}"
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            return None, f"image bytes are {type(raw).__name__}, expected binary"
        data = bytes(raw)
    elif value is None:
        return None, "no image"
    else:
        return None, f"an image column value of type {type(value).__name__} (expected binary or {{bytes, path}})"
    if not data:
        return None, "empty image bytes"
    return data, ""


def sniff_extension(data: bytes) -> str:
    """The file extension of image bytes from their magic number (``.bin`` when unknown: the policy decides)."""
    for magic, extension in _MAGIC:
        if data.startswith(magic):
            return extension
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".bin"


class ImageStore:
    """Writes embedded image bytes under ``<root>/<folder>/`` by content hash (see the module docstring)."""

    def __init__(self, root: str | Path, folder: str = EXTRACTED) -> None:
        self.root = Path(root)
        self.folder = folder
        self.written = 0
        self.reused = 0

    def put(self, value: Any) -> tuple[str | None, str]:
        """``(relative path, "")`` of the stored image, or ``(None, why)`` when there is nothing safe to store."""
        from silkfire.images import MAX_IMAGE_BYTES

        data, why = image_bytes(value)
        if data is None:
            return None, why
        if len(data) > MAX_IMAGE_BYTES:
            return None, f"image bytes too large ({len(data)} bytes, limit {MAX_IMAGE_BYTES})"
        digest = hashlib.sha256(data).hexdigest()
        relative = f"{self.folder}/{digest[:2]}/{digest}{sniff_extension(data)}"
        folder = self.root / self.folder / digest[:2]
        folder.mkdir(parents=True, exist_ok=True)
        if not folder.resolve().is_relative_to(self.root.resolve()):
            return None, f"the extraction folder {folder} leaves the data root {self.root} (a symlink?)"
        target = folder / Path(relative).name
        if target.is_symlink() or (target.exists() and not target.is_file()):
            return None, f"{target} exists and is not a regular file"
        if target.is_file() and target.stat().st_size == len(data) and target.read_bytes() == data:
            self.reused += 1
            return relative, ""
        temporary = folder / f".{target.name}.{os.getpid()}.tmp"
        temporary.unlink(missing_ok=True)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temporary, target)
        self.written += 1
        return relative, ""


# ---- rows -> records -------------------------------------------------------------------------------------------
class _Unstorable(Exception):
    pass


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return None if value != value or value in (float("inf"), float("-inf")) else value
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (datetime.date, datetime.datetime, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise _Unstorable
    return str(value)


def record_from_row(kind: str, row: Mapping[str, Any], store: ImageStore | None,
                    dropped: set[str] | None = None) -> dict[str, Any]:
    """One parquet row as a record of ``kind``: its image bytes (when the kind has an image column) extracted
    into ``store`` (None: the column is left out), other binary columns left out (named in ``dropped``)."""
    column, field = IMAGE_COLUMNS.get(kind, (None, None))
    record: dict[str, Any] = {}
    for name, value in row.items():
        if name == column:
            continue
        try:
            record[name] = _jsonable(value)
        except _Unstorable:
            if dropped is not None:
                dropped.add(name)
    if column is not None and column in row and store is not None:
        relative, why = store.put(row[column])
        if field in record and field != column and record[field] is not None:
            record[f"published_{field}"] = record[field]  # VLFeedback: the released img_path, kept for lineage
        record[field] = relative
        if relative is None:
            record[f"{field}_error"] = why
    return record


def convert_parquet(path: str | Path, kind: str, out: str | Path, image_root: str | Path | None = None,
                    ) -> dict[str, Any]:
    """Write a parquet file (or folder of shards) of ``kind`` as JSONL to ``out`` (one line per row) with its
    embedded images extracted under ``image_root`` (default: the file's folder); returns counts."""
    path, out = Path(path), Path(out)
    root = Path(image_root) if image_root is not None else (path if path.is_dir() else path.parent)
    store = ImageStore(root)
    dropped: set[str] = set()
    problems: list[str] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp")
    rows = 0
    with temporary.open("w", encoding="utf-8") as handle:
        for number, row in parquet_rows(path):
            record = record_from_row(kind, row, store, dropped)
            for key, value in record.items():
                if key.endswith("_error") and value:
                    problems.append(f"{path}: {ROW} {number}: field {key.removesuffix('_error')!r}: {value}")
            handle.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
            rows = number
    os.replace(temporary, out)
    return {"rows": rows, "images_extracted": store.written, "images_reused": store.reused,
            "image_root": str(root), "dropped_columns": sorted(dropped), "image_problems": problems[:20]}


def read_located(path: str | Path, *, kind: str | None = None,
                 image_root: str | Path | None = None) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """``(where, record)`` pairs and the messages of unreadable records, for JSONL, a JSON list or parquet.

    Parquet rows are named ``"FILE: row N"``; their embedded images are extracted under ``image_root`` when it
    is given, else left out (scoring needs no pixels)."""
    if not is_parquet(path):
        return read_located_json(path)
    store = ImageStore(image_root) if image_root is not None else None
    located = [(f"{path}: {ROW} {number}", record_from_row(kind or "", row, store))
               for number, row in parquet_rows(path, None if store is not None else _columns_without_images(path))]
    return located, []


def _columns_without_images(path: str | Path) -> list[str]:
    images = {column for column, _ in IMAGE_COLUMNS.values()}
    return [name for name in parquet_columns(path) if name not in images]


def read_records_any(path: str | Path, *, kind: str | None = None,
                     image_root: str | Path | None = None) -> list[dict[str, Any]]:
    """All records of a JSONL / JSON-list / parquet file; every unreadable record is reported at once."""
    located, errors = read_located(path, kind=kind, image_root=image_root)
    if errors:
        raise RecordErrors(path, errors)
    return [record for _, record in located]


# ---- the gate on any published layout ----------------------------------------------------------------------------
def validate_published(spec: Any, path: str | Path, config: Any, report_dir: str | Path,
                       image_root: str | Path | None = None, *, previous_profile: str | Path | None = None,
                       progress: bool = False) -> Any:
    """:func:`silkfire.quality.kinds.validate_file` on a JSONL / JSON-list file as it is, or on a parquet file
    converted to ``<report_dir>/converted/<stem>.jsonl`` (images extracted under ``image_root``, default the
    file's folder); the report then names the parquet file and its rows."""
    from silkfire.quality.kinds import validate_file

    path = Path(path)
    if not is_parquet(path):
        return validate_file(spec, path, config, report_dir, image_root, previous_profile=previous_profile,
                             progress=progress)
    report_dir = Path(report_dir)
    root = Path(image_root) if image_root is not None else (path if path.is_dir() else path.parent)
    converted = report_dir / CONVERTED / f"{path.stem or 'data'}.jsonl"
    counts = convert_parquet(path, spec.kind, converted, root)
    result = validate_file(spec, converted, config, report_dir, root, previous_profile=previous_profile,
                           progress=progress)
    tables = tuple(dataclasses.replace(table, source=path, line_label=ROW) if Path(table.source) == converted
                   else table for table in result.tables)
    stats = {**result.stats, "source": str(path), "converted": str(converted),
             **{key: value for key, value in counts.items() if key != "rows"}}
    result = dataclasses.replace(result, tables=tables, stats=stats)
    result.write(report_dir)
    return result


# ---- MMHal-Bench -----------------------------------------------------------------------------------------------
def mmhal_image_path(item: Mapping[str, Any], image_dir: str = MMHAL_IMAGE_DIR) -> str | None:
    """Where an MMHal-Bench item's image lies relative to the benchmark folder: its ``image_path`` when it has
    one, else ``<image_dir>/<last part of image_src>`` (how LLaVA-RLHF's evaluation finds it); None when
    neither can be read. The path is only a name: reading it goes through the image path policy."""
    given = item.get("image_path")
    if isinstance(given, str) and given.strip():
        return given
    source = item.get("image_src")
    if not isinstance(source, str) or not source.strip():
        return None
    name = urlparse(source).path.rsplit("/", 1)[-1] or source.rsplit("/", 1)[-1]
    return f"{image_dir}/{name}" if name else None


def mmhal_items(path: str | Path, image_dir: str = MMHAL_IMAGE_DIR) -> list[dict[str, Any]]:
    """MMHal-Bench items (``response_template.json`` or any JSONL / JSON-list copy) with ``image_path`` set."""
    items = read_records_any(path, kind="mmhal")
    out = []
    for item in items:
        image = mmhal_image_path(item, image_dir)
        out.append({**item, "image_path": image} if image is not None else dict(item))
    return out


# ---- VLFeedback prompts ----------------------------------------------------------------------------------------
PROMPT_KEYS = ("id", "prompt", "img_path")


def vlfeedback_prompts(path: str | Path) -> list[tuple[int | None, str, dict[str, Any]]]:
    """``(row number or None, where, {id, prompt, img_path})`` of every record of a VLFeedback file (JSONL,
    JSON list or parquet; completions are not read). Parquet rows carry their number, for
    :func:`extract_row_images`."""
    if not is_parquet(path):
        located, errors = read_located_json(path)
        if errors:
            raise RecordErrors(path, errors)
        return [(None, where, {key: record.get(key) for key in PROMPT_KEYS}) for where, record in located]
    return [(number, f"{path}: {ROW} {number}", {key: _jsonable_or_none(row.get(key)) for key in PROMPT_KEYS})
            for number, row in parquet_rows(path, list(PROMPT_KEYS))]


def _jsonable_or_none(value: Any) -> Any:
    try:
        return _jsonable(value)
    except _Unstorable:
        return None


def has_embedded_images(path: str | Path, kind: str) -> bool:
    """Whether a file is parquet with the image-bytes column of ``kind``."""
    return kind in IMAGE_COLUMNS and is_parquet(path) and IMAGE_COLUMNS[kind][0] in parquet_columns(path)


def extract_row_images(path: str | Path, kind: str, rows: Sequence[int],
                       image_root: str | Path) -> dict[int, tuple[str | None, str]]:
    """``row -> (relative path | None, why)``: the embedded images of the given rows only, extracted under
    ``image_root`` (see the module docstring)."""
    column = IMAGE_COLUMNS[kind][0]
    wanted = set(rows)
    store = ImageStore(image_root)
    found: dict[int, tuple[str | None, str]] = {}
    for number, row in parquet_rows(path, [column]):
        if number in wanted:
            found[number] = store.put(row.get(column))
    return found
