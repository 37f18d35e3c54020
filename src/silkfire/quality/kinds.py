"""One data file of a published format through the gate: load in chunks, derive, check, apply the policy, drift.

A record kind (``vlfeedback``, ``pairs``, ``fire``, ``mme``, ``mmhal``) is a :class:`KindSpec`: its top-level
schema, the per-record checks computed in Python on each chunk (``derive``: status columns, token counts,
category counts for the profile), the whole-table checks (groups, order), ids, duplicate keys and image
field. :func:`validate_file` runs any of them the same way, so every kind gets the shared checks (schema and
types, unique ids, blank text, token bounds, duplicate (image, prompt), images inside the root), the policy,
the quarantine, the profile and the drift checks from one implementation.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from silkfire.quality import derive
from silkfire.quality.columnar import BLOCK_BYTES as COLUMNAR_BLOCK_BYTES
from silkfire.quality.columnar import MIN_BYTES as COLUMNAR_MIN_BYTES
from silkfire.quality.columnar import Columnar, clean_frame, physical_lines, read_block
from silkfire.quality.config import GateConfig, QualityConfig
from silkfire.quality.frames import TOKENS, derived_column
from silkfire.quality.gate import (
    Check,
    PreparedTable,
    Suite,
    between,
    in_set,
    is_ok,
    row_count,
    run_gate,
    unique,
)
from silkfire.quality.profile import build_profile, compare, count_values, drift_table, load_profile, write_profile
from silkfire.quality.frames import (
    JSON,
    LINE,
    LoadedRecords,
    is_json_list,
    iter_jsonl_block,
    iter_record_chunks,
    jsonl_blocks,
    record_status,
    records_frame,
    type_column,
)
from silkfire.quality.report import GateResult

# TOKENS: suffix of token-count columns; every such column gets the token-bounds check. The derived columns' dtypes
# live beside the frame's (quality.frames), which the columnar reader shares.

_TYPE_WORDS = {
    "text": "a non-empty string", "str": "a string", "int": "an integer", "float": "a number", "list": "a list",
    "dict": "an object", "bool": "true or false", "null": "null",
}


@dataclass
class Derived:
    """What a kind's ``derive`` returns for one chunk: extra columns (one value per row) and category counts."""

    columns: dict[str, list[Any]] = field(default_factory=dict)
    counts: dict[str, Counter[str]] = field(default_factory=dict)


Deriver = Callable[[Sequence[dict[str, Any]], Sequence[str], Any, QualityConfig], Derived]
TableChecks = Callable[[pd.DataFrame, Any, QualityConfig], list[Check]]


@dataclass(frozen=True)
class KindSpec:
    """How one record kind goes through the gate (see the module docstring)."""

    kind: str
    schema: Mapping[str, str | tuple[str, ...]]  # top-level field -> allowed type names ("missing": optional)
    keep: tuple[str, ...]  # top-level fields whose values stay in the frame (the rest: type column only)
    hint: str  # what to do when a record is wrong (who produces this kind of file)
    derive: Deriver | None = None  # per chunk: status columns, "<field>__tokens" columns, profile counts
    table_checks: TableChecks | None = None  # whole-table checks; may add columns to the frame
    ids: tuple[str, ...] = ()  # columns whose values must be unique
    duplicate: tuple[str, ...] = ()  # columns that together must be unique: (image, prompt)
    image: str | None = None  # column holding image paths (a kept field or a derived column)
    image_field: str = "image"  # the record field named in reports for image problems
    group: str | None = None  # rows standing or falling together under policy filter
    profile_columns: tuple[tuple[str, str], ...] = ()  # (metric, column): category counts for the drift checks
    texts: tuple[str, ...] = ()  # kept top-level text fields whose whitespace tokens are bounded
    columnar: Columnar | None = None  # JSONL through Arrow + a screen; rows it cannot prove clean go per record


def _as_tuple(kinds: str | tuple[str, ...]) -> tuple[str, ...]:
    return (kinds,) if isinstance(kinds, str) else tuple(kinds)


def type_words(kinds: str | tuple[str, ...]) -> str:
    names = [name for name in _as_tuple(kinds) if name != "missing"]
    return " or ".join(_TYPE_WORDS.get(name, name) for name in names)


# ---- the shared checks ----------------------------------------------------------------------------------------
def schema_checks(schema: Mapping[str, str | tuple[str, ...]], hint: str) -> list[Check]:
    """At least one record, every line a JSON object, every top-level field present with its type."""
    checks = [
        row_count(1, "the file holds at least one record", hint),
        is_ok(JSON, "every line is one JSON object", "fix or remove the broken line (a write cut short?); " + hint,
              field=""),
    ]
    for name, kinds in schema.items():
        allowed = list(_as_tuple(kinds))
        words = type_words(kinds)
        if "missing" in allowed:
            description = f"{name!r}, when present, is {words}"
        else:
            description = f"every record has {name!r}, {words}"
        checks.append(in_set(type_column(name), allowed, description,
                             f"give every record the key {name!r} with {words}; " + hint, field=name))
    return checks


def token_checks(frame: pd.DataFrame, texts: Sequence[str], kind: str, config: QualityConfig) -> list[Check]:
    """Token bounds on the top-level text fields ``texts`` and on every ``<field>__tokens`` column already derived."""
    low, high = config.min_tokens, config.max_tokens_for(kind)
    for name in texts:
        if name in frame.columns:
            column = f"{name}{TOKENS}"
            frame[column] = derived_column(column, derive.token_counts(frame[name].tolist(), low, high))
    checks = []
    for column in frame.columns:
        if column.endswith(TOKENS):
            name = column[: -len(TOKENS)]
            checks.append(between(
                column, low, high, f"{name!r} has {low} to {high} whitespace tokens",
                f"shorten the text, or raise quality.{kind}.max_tokens (or quality.max_tokens)", field=name,
            ))
    return checks


def image_checks(frame: pd.DataFrame, spec: KindSpec, config: QualityConfig, root: Path,
                 progress: bool) -> tuple[list[Check], int]:
    """Images exist, decode, have the configured size/mode, and stay inside ``root``; (checks, images checked)."""
    if spec.image is None or not config.images_for(spec.kind) or spec.image not in frame.columns:
        return [], 0
    size, mode = config.image_shape_for(spec.kind)
    checker = derive.ImageChecker(root, size=size, mode=mode, max_pixels=config.max_image_pixels or None,
                                  workers=config.workers, progress=progress)
    column = f"{spec.image_field}__status"
    frame[column] = derived_column(column, checker.statuses(frame[spec.image].tolist()))
    shape = ""
    if size:
        shape += f" of {size[0]}x{size[1]} pixels"
    if mode:
        shape += f" in mode {mode}"
    check = is_ok(
        column,
        f"{spec.image_field!r} is a relative path inside the image root to a decodable image{shape}",
        f"image paths resolve against the image root ({root}; `silkfire validate --image-root DIR`); they must be "
        "relative, stay inside it (no '..', no absolute path, no symlink out of it) and name a readable image",
        field=spec.image_field,
    )
    return [check], checker.checked


def id_checks(frame: pd.DataFrame, spec: KindSpec) -> list[Check]:
    """Unique ids (GX) and no duplicate (image, prompt) (a derived status: long texts stay out of GX)."""
    checks = [unique(column, f"every {column!r} is unique", "remove or rename the duplicate record; " + spec.hint)
              for column in spec.ids]
    if spec.duplicate:
        fields = [column.split("__")[0] for column in spec.duplicate]
        column = f"{'+'.join(fields)}__duplicate"
        frame[column] = derived_column(column, derive.duplicate_status(frame, spec.duplicate))
        checks.append(is_ok(
            column, f"no two records share ({', '.join(fields)})",
            "drop the duplicate record (the same example twice weighs it double); " + spec.hint,
            field=",".join(fields),
        ))
    return checks


# ---- one file through the gate ---------------------------------------------------------------------------------
def validate_file(
    spec: KindSpec,
    path: str | Path,
    config: QualityConfig,
    report_dir: str | Path,
    image_root: str | Path | None = None,
    *,
    previous_profile: str | Path | None = None,
    progress: bool = False,
) -> GateResult:
    """Validate one file of ``spec``'s kind; write the reports (and under policy filter quarantine + clean file).

    Image paths resolve against ``image_root`` (default: the file's folder). ``previous_profile`` is the
    ``profile.json`` of the previous data version (None on a first run: no drift check). The current profile is
    written to ``<report_dir>/profile.json``.
    """
    start = time.perf_counter()
    path = Path(path)
    report_dir = Path(report_dir)
    root = Path(image_root) if image_root is not None else path.parent
    section: GateConfig = config.section(spec.kind)
    previous = load_profile(previous_profile) if previous_profile is not None else None  # before overwriting it

    cpu: Counter[str] = Counter()
    frames, counts, line_label, error = _load(spec, path, section, config, progress, cpu)
    load_s = time.perf_counter() - start

    summary = LoadedRecords(path, (), (), (), line_label=line_label)
    if error is not None:
        (report_dir / "profile.json").unlink(missing_ok=True)  # no stale profile next to a failed read
        tables = [PreparedTable(spec.kind, error, hint=spec.hint)]
        stats: dict[str, Any] = {"source": str(path), "policy": config.policy_for(spec.kind)}
        return run_gate(spec.kind, tables, report_dir=report_dir, max_examples=config.max_examples,
                        max_lines=config.max_lines, stats=stats, started=start, policy=config.policy_for(spec.kind),
                        data_docs=config.data_docs)

    frame = concat_frames(frames)
    del frames
    derive_start = time.perf_counter()
    checks = schema_checks(spec.schema, spec.hint) + id_checks(frame, spec)
    if spec.table_checks is not None:
        checks += spec.table_checks(frame, section, config)
    checks += token_checks(frame, spec.texts, spec.kind, config)
    image_field = getattr(section, "image_field", spec.image_field)  # FIRE: image or the flattened img_path
    if image_field != spec.image_field:
        spec = dataclasses.replace(spec, image_field=image_field)
    images, images_checked = image_checks(frame, spec, config, root, progress)
    checks += images

    for metric, column in spec.profile_columns:
        if column in frame.columns:
            counts.setdefault(metric, Counter()).update(count_values(frame[column]))
    profile = build_profile(spec.kind, {f"{spec.kind}.{metric}": c for metric, c in counts.items()}, config.drift)
    tables = [PreparedTable(spec.kind, summary, frame, Suite(spec.kind, tuple(checks)), spec.hint, spec.group)]
    stats = {
        "source": str(path),
        "image_root": str(root),
        "records": len(frame),
        "images_checked": images_checked,
        "load_s": round(load_s, 3),  # wall: read + parse + per-record rules (in worker processes for big files)
        **{name: round(value, 3) for name, value in sorted(cpu.items())},  # CPU of those stages, all processes
        "derive_s": round(time.perf_counter() - derive_start, 3),  # wall: whole-table rules (ids, groups, images)
        "policy": config.policy_for(spec.kind),
    }
    if previous is not None:
        drift = compare(profile, previous, config.drift)
        stats["drift"] = drift
        if drift:
            tables.append(drift_table(spec.kind, drift, Path(previous_profile)))  # type: ignore[arg-type]
    else:
        stats["drift"] = "no previous profile (first version): distributions recorded, not compared"
    stats["profile"] = str(write_profile(report_dir, profile))  # the next version's drift reference
    return run_gate(
        spec.kind, tables, report_dir=report_dir, max_examples=config.max_examples, max_lines=config.max_lines,
        stats=stats, started=start, policy=config.policy_for(spec.kind),
        max_quarantine_fraction=config.max_quarantine_fraction, data_docs=config.data_docs,
    )


# ---- loading: chunks in this process, or blocks of a large JSONL file in several --------------------------------
PARALLEL_MIN_BYTES = 64 << 20  # smaller files load faster than worker processes start
BLOCK_BYTES = 32 << 20


def _frame_of(spec: KindSpec, chunk: LoadedRecords, section: GateConfig, config: QualityConfig,
              counts: dict[str, Counter[str]], cpu: Counter[str] | None = None) -> pd.DataFrame:
    """One chunk's frame: schema columns, then the kind's derived columns; ``cpu`` gains the CPU seconds."""
    clock = time.thread_time()
    frame = records_frame(chunk, spec.schema, keep=spec.keep)
    schema_done = time.thread_time()
    if spec.derive is not None:
        derived = spec.derive(chunk.records, chunk.json_status, section, config)
        extra = {name: derived_column(name, values) for name, values in derived.columns.items()}
        frame = pd.concat([frame, pd.DataFrame(extra, index=frame.index)], axis=1)
        for metric, counter in derived.counts.items():
            counts.setdefault(metric, Counter()).update(counter)
    if cpu is not None:
        cpu["schema_cpu_s"] += schema_done - clock
        cpu["rules_cpu_s"] += time.thread_time() - schema_done
    return frame


def _timed_chunks(chunks: Iterable[LoadedRecords], cpu: Counter[str]) -> Iterator[LoadedRecords]:
    """The chunks, adding the CPU seconds spent reading and parsing each to ``cpu["parse_cpu_s"]``."""
    iterator = iter(chunks)
    while True:
        clock = time.thread_time()
        try:
            chunk = next(iterator)
        except StopIteration:
            return
        finally:
            cpu["parse_cpu_s"] += time.thread_time() - clock
        yield chunk


def concat_frames(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate chunk frames; categorical columns stay categorical (their category sets are merged)."""
    from pandas.api.types import union_categoricals

    if len(frames) == 1:
        return frames[0].reset_index(drop=True)
    data: dict[str, Any] = {}
    for name in frames[0].columns:
        parts = [frame[name] for frame in frames]
        if all(isinstance(part.dtype, pd.CategoricalDtype) for part in parts):
            arrays = [part.array for part in parts]
            if len({str(array.categories.dtype) for array in arrays}) > 1:  # an all-null part has float categories
                arrays = [array.set_categories(array.categories.astype(object)) for array in arrays]
            data[name] = union_categoricals(arrays)
        else:
            data[name] = pd.concat(parts, ignore_index=True)
    return pd.DataFrame(data)


def _load(
    spec: KindSpec, path: Path, section: GateConfig, config: QualityConfig, progress: bool, cpu: Counter[str]
) -> tuple[list[pd.DataFrame], dict[str, Counter[str]], str, LoadedRecords | None]:
    """(frames, profile counts, line label, the unreadable-file chunk or None); ``cpu`` gains CPU per stage."""
    if spec.columnar is not None and path.is_file() and not is_json_list(path):
        return _load_columnar(spec, path, section, config, progress, cpu)
    if (config.processes > 1 and path.is_file() and path.stat().st_size >= PARALLEL_MIN_BYTES
            and not is_json_list(path)):
        return _load_parallel(spec, path, config, progress, cpu)
    frames: list[pd.DataFrame] = []
    counts: dict[str, Counter[str]] = {}
    line_label = "line"
    chunks = _timed_chunks(iter_record_chunks(path, config.chunk_size), cpu)
    for chunk in tqdm(chunks, desc=f"quality: {spec.kind}", unit="chunk", disable=not progress):
        if chunk.error:
            return [], counts, chunk.line_label, chunk
        line_label = chunk.line_label
        frames.append(_frame_of(spec, chunk, section, config, counts, cpu))
    return frames, counts, line_label, None


def _load_columnar(
    spec: KindSpec, path: Path, section: GateConfig, config: QualityConfig, progress: bool, cpu: Counter[str]
) -> tuple[list[pd.DataFrame], dict[str, Counter[str]], str, None]:
    """Blocks of a JSONL file through Arrow and the kind's screen (silkfire.quality.columnar); the lines of a
    block Arrow cannot read exactly, and the rows the screen cannot prove clean, go the per-record way.

    ``quality.processes`` > 1: that many threads work on consecutive blocks (Arrow's parse and compute release the
    GIL, so one block parses while another is screened); results are merged in file order, so the frame is the
    same as with one thread."""
    from concurrent.futures import ThreadPoolExecutor

    def block_work(block: tuple[int, int]) -> tuple[list[pd.DataFrame], dict[str, Counter[str]], Counter[str], int]:
        start, end = block
        with path.open("rb") as handle:
            handle.seek(start)
            data = handle.read(end - start)
        block_counts: dict[str, Counter[str]] = {}
        block_cpu: Counter[str] = Counter()
        return (_block_frames(spec, path, start, data, section, config, block_counts, block_cpu), block_counts,
                block_cpu, physical_lines(data))

    frames: list[pd.DataFrame] = []
    counts: dict[str, Counter[str]] = {}
    offset = 0  # physical lines before the current block
    blocks = jsonl_blocks(path, COLUMNAR_BLOCK_BYTES)
    workers = max(1, min(config.processes, len(blocks)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(block_work, blocks) if workers > 1 else map(block_work, blocks)
        for block_frames, block_counts, block_cpu, lines in tqdm(results, total=len(blocks),
                                                                 desc=f"quality: {spec.kind}", unit="block",
                                                                 disable=not progress):
            for block in block_frames:
                block[LINE] = block[LINE] + offset
                frames.append(block)
            offset += lines
            cpu.update(block_cpu)
            for metric, counter in block_counts.items():
                counts.setdefault(metric, Counter()).update(counter)
    if not frames:
        frames = [_frame_of(spec, LoadedRecords(path, (), (), ()), section, config, counts)]
    return frames, counts, "line", None


def _block_frames(spec: KindSpec, path: Path, start: int, data: bytes, section: GateConfig, config: QualityConfig,
                  counts: dict[str, Counter[str]], cpu: Counter[str]) -> list[pd.DataFrame]:
    """The non-empty frames of one block, lines numbered from 1 in the block. A block Arrow declines is split in
    two at a line start down to COLUMNAR_MIN_BYTES, so one broken line sends ~100 rows the per-record way, not
    a whole block."""
    clock = time.thread_time()
    table = read_block(data, spec.columnar)  # type: ignore[arg-type]
    cpu["parse_cpu_s"] += time.thread_time() - clock
    frame = None if table is None else _screened(spec, table, data, path, section, config, counts, cpu)
    if frame is None and table is None and len(data) > COLUMNAR_MIN_BYTES:
        middle = data.find(b"\n", len(data) // 2) + 1
        if 0 < middle < len(data):
            head = _block_frames(spec, path, start, data[:middle], section, config, counts, cpu)
            tail = _block_frames(spec, path, start + middle, data[middle:], section, config, counts, cpu)
            lines = physical_lines(data[:middle])
            for part in tail:
                part[LINE] = part[LINE] + lines
            return head + tail
    if frame is None:
        chunks = _timed_chunks(iter_jsonl_block(path, start, start + len(data), config.chunk_size), cpu)
        frame = concat_frames([_frame_of(spec, chunk, section, config, counts, cpu) for chunk in chunks])
        cpu["rows_per_record"] += len(frame)
    return [frame] if len(frame) else []


def _screened(spec: KindSpec, table: Any, data: bytes, path: Path, section: GateConfig, config: QualityConfig,
              counts: dict[str, Counter[str]], cpu: Counter[str]) -> pd.DataFrame | None:
    """One Arrow block's frame (block-relative lines): the screen's clean rows as constant columns, the others
    parsed again and derived per record; None when the screen declines the block."""
    clock = time.thread_time()
    screen = spec.columnar.screen(table, section, config)  # type: ignore[union-attr]
    cpu["rules_cpu_s"] += time.thread_time() - clock
    if screen is None:
        return None
    clock = time.thread_time()
    lines = np.arange(1, table.num_rows + 1)
    frames = [clean_frame(screen, lines[screen.clean], spec.schema, spec.keep)]
    for metric, counter in screen.counts.items():
        counts.setdefault(metric, Counter()).update(counter)
    cpu["schema_cpu_s"] += time.thread_time() - clock
    suspects = np.flatnonzero(~screen.clean)
    if not len(suspects):
        return frames[0]
    raw = data.split(b"\n")
    records, status = zip(*(record_status(raw[row]) for row in suspects.tolist()))
    chunk = LoadedRecords(path, records, tuple((suspects + 1).tolist()), status)
    frames.append(_frame_of(spec, chunk, section, config, counts, cpu)[frames[0].columns])
    cpu["rows_per_record"] += len(suspects)
    return concat_frames(frames).sort_values(LINE, kind="stable", ignore_index=True)


def _load_parallel(
    spec: KindSpec, path: Path, config: QualityConfig, progress: bool, cpu: Counter[str]
) -> tuple[list[pd.DataFrame], dict[str, Counter[str]], str, None]:
    """Blocks of ~32 MB parsed and derived by ``config.processes`` worker processes, renumbered in order."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    blocks = jsonl_blocks(path, BLOCK_BYTES)
    frames: list[pd.DataFrame] = []
    counts: dict[str, Counter[str]] = {}
    offset = 0  # physical lines before the current block
    context = multiprocessing.get_context("spawn")  # no fork of a process holding GX / threads
    with ProcessPoolExecutor(max_workers=config.processes, mp_context=context) as pool:
        jobs = pool.map(_load_block, [(spec.kind, str(path), start, end, config) for start, end in blocks])
        for frame, block_counts, lines, block_cpu in tqdm(jobs, total=len(blocks), desc=f"quality: {spec.kind}",
                                                          unit="block", disable=not progress):
            cpu.update(block_cpu)
            if len(frame):
                frame[LINE] = frame[LINE] + offset
                frames.append(frame)
            offset += lines
            for metric, counter in block_counts.items():
                counts.setdefault(metric, Counter()).update(counter)
    if not frames:
        frames = [_frame_of(spec, LoadedRecords(path, (), (), ()), config.section(spec.kind), config, counts)]
    return frames, counts, "line", None


def _load_block(
    job: tuple[str, str, int, int, QualityConfig],
) -> tuple[pd.DataFrame, dict[str, Counter[str]], int, Counter[str]]:
    """Worker: one block of a JSONL file -> (frame with block-relative lines, profile counts, lines read, CPU)."""
    kind, path, start, end, config = job
    spec = get_spec(kind)
    section = config.section(kind)
    counts: dict[str, Counter[str]] = {}
    cpu: Counter[str] = Counter()
    seen = [0]
    chunks = _timed_chunks(iter_jsonl_block(Path(path), start, end, config.chunk_size, seen), cpu)
    frames = [_frame_of(spec, chunk, section, config, counts, cpu) for chunk in chunks]
    clock = time.process_time()
    frame = concat_frames(frames)
    cpu["schema_cpu_s"] += time.process_time() - clock
    return frame, counts, seen[0], cpu


_SPECS = {"vlfeedback": "vlfeedback", "pairs": "pairs", "fire": "fire", "mme": "mme", "mmhal": "mmhal"}


def get_spec(kind: str) -> KindSpec:
    """The :class:`KindSpec` of a record kind (``silkfire.quality.<kind>.SPEC``)."""
    import importlib

    if kind not in _SPECS:
        raise ValueError(f"unknown record kind {kind!r}; known: {sorted(_SPECS)}")
    return importlib.import_module(f"silkfire.quality.{_SPECS[kind]}").SPEC
