"""What a gate does with failing rows: policy "fail" stops the pipeline, "filter" quarantines them.

Under "filter" every row that fails a row-level expectation (and every row sharing a group with it, e.g. the
other half of an MME Yes/No pair) goes to ``<report_dir>/quarantine.jsonl`` with its original line and the
failing expectations; every other row goes to ``<report_dir>/clean/<file name>`` in the file's own format
(JSONL lines copied byte for byte; a JSON list written as a JSON list). Nothing disappears silently:
``rows_in == rows_out + rows_quarantined`` is checked for every file. The gate still fails when a failure
cannot be fixed by dropping rows (a table-level or order-dependent expectation, an unreadable file) or when
more than ``max_quarantine_fraction`` of the rows are bad (a broken producer, not a few bad records).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import pandas as pd

from silkfire.quality.frames import LINE, iter_raw_records, parse_json
from silkfire.quality.report import CLEAN_DIR, QUARANTINE_JSONL, TableResult, jsonable


class Quarantine:
    """``<report_dir>/quarantine.jsonl``, opened for one gate run (stale files of an earlier run are removed)."""

    def __init__(self, report_dir: Path, *, enabled: bool) -> None:
        self.report_dir = Path(report_dir)
        self.path = self.report_dir / QUARANTINE_JSONL
        self.clean_dir = self.report_dir / CLEAN_DIR
        self.enabled = enabled
        self.count = 0
        self._handle: IO[str] | None = None

    def __enter__(self) -> Quarantine:
        # an earlier run's quarantine / clean files must not pass for this run's
        self.path.unlink(missing_ok=True)
        if self.clean_dir.exists():
            shutil.rmtree(self.clean_dir)
        if self.enabled:
            self.report_dir.mkdir(parents=True, exist_ok=True)
            self.clean_dir.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("w", encoding="utf-8")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def add(self, entry: dict[str, Any]) -> None:
        assert self._handle is not None, "quarantine is not open"
        self._handle.write(json.dumps(jsonable(entry), ensure_ascii=False) + "\n")
        self.count += 1


def row_reasons(table: TableResult, frame: pd.DataFrame | None, group: str | None) -> dict[int, list[dict[str, Any]]]:
    """line -> the row-level failures of that row (each with the value found), closed over ``group``."""
    reasons: dict[int, list[dict[str, Any]]] = {}
    for failure in table.failures:
        if not failure.filterable:
            continue
        brief = failure.brief()
        for line, value in failure.unexpected_rows:
            reasons.setdefault(line, []).append({**brief, "value": value})
    if group and reasons and frame is not None and group in frame.columns:
        keys = dict(zip(frame[LINE].tolist(), frame[group].tolist()))
        bad_keys = {keys.get(line) for line in reasons} - {None}
        bad_keys = {key for key in bad_keys if not (isinstance(key, float) and key != key)}  # NaN
        if bad_keys:
            for line, key in keys.items():
                if key in bad_keys and line not in reasons:
                    reasons[line] = [{
                        "expectation": "group_is_complete",
                        "column": group,
                        "field": group,
                        "description": f"another row with the same {group!r} failed: the group goes together",
                        "value": key,
                    }]
    return reasons


def apply_policy(
    table: TableResult,
    frame: pd.DataFrame | None,
    group: str | None,
    policy: str,
    max_fraction: float,
    quarantine: Quarantine,
) -> TableResult:
    """The table's result under ``policy``; under "filter" also write its clean file and quarantined rows."""
    reasons = row_reasons(table, frame, group)
    failing = len(reasons)
    if policy != "filter":
        return dataclasses.replace(table, policy=policy, rows_failing=failing, rows_out=table.rows)

    blocking = [failure for failure in table.failures if not failure.filterable]
    clean, kept, dropped = _split(table, reasons, quarantine)
    rows_in = table.rows
    if rows_in != kept + dropped:  # the promise of the filter policy: nothing disappears silently
        raise RuntimeError(
            f"{table.source}: {rows_in} rows validated but {kept} kept + {dropped} quarantined; the file changed "
            "while the gate ran? Run the gate again."
        )
    fraction = dropped / rows_in if rows_in else 0.0
    if blocking:
        names = ", ".join(sorted({f"{failure.expectation}({failure.column or ''})" for failure in blocking}))
        success, verdict = False, f"failures that dropping rows cannot fix: {names}"
    elif fraction > max_fraction:
        success, verdict = False, (
            f"{dropped} of {rows_in} rows ({fraction:.1%}) fail, more than max_quarantine_fraction "
            f"{max_fraction:.1%}: the producer looks broken"
        )
    else:
        success = True
        verdict = (f"{dropped} of {rows_in} rows ({fraction:.2%}) quarantined, {kept} kept in {clean}"
                   if dropped else f"all {rows_in} rows kept in {clean}")
    return dataclasses.replace(
        table, success=success, policy=policy, rows_failing=failing, rows_quarantined=dropped, rows_out=kept,
        clean_path=clean, verdict=verdict,
    )


def _split(table: TableResult, reasons: dict[int, list[dict[str, Any]]], quarantine: Quarantine) -> tuple[Path, int, int]:
    """Stream the source once: good rows to the clean file, bad ones to the quarantine. (path, kept, dropped)."""
    clean = quarantine.clean_dir / table.source.name
    kept = dropped = 0
    items: list[Any] = []  # JSON-list files are written back as a JSON list
    is_list = False
    with clean.open("wb") as out:
        for line, raw, item in iter_raw_records(table.source):
            if raw is None:
                is_list = True
            if line in reasons:
                entry: dict[str, Any] = {
                    "table": table.name, "source": str(table.source), "line": line,
                    "line_label": table.line_label, "failures": reasons[line],
                }
                if raw is None:
                    entry["record"] = item
                else:
                    record, status = parse_json(raw)
                    if status == "ok":
                        entry["record"] = record
                    else:
                        entry["raw"] = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                quarantine.add(entry)
                dropped += 1
            else:
                if raw is None:
                    items.append(item)
                else:
                    out.write(raw if raw.endswith(b"\n") else raw + b"\n")
                kept += 1
        if is_list:
            out.write(json.dumps(items, ensure_ascii=False).encode("utf-8"))
    return clean, kept, dropped
