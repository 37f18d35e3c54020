"""Typed results of the data-quality gate and their renderings: terminal text, Markdown, JSON."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from silkfire.io import write_json

VALIDATION_JSON = "validation.json"
REPORT_TXT = "report.txt"
DATA_DOCS_DIR = "data_docs"
QUARANTINE_JSONL = "quarantine.jsonl"  # policy filter: the dropped rows, each with its line and failures
CLEAN_DIR = "clean"  # policy filter: the kept rows, one file per validated file (same name, same format)
PROFILE_JSON = "profile.json"  # this version's distributions, the next version's drift reference


@dataclass(frozen=True)
class Failure:
    """One failed expectation of one table.

    ``lines`` are 1-based line numbers (or record numbers, see ``TableResult.line_label``) in the source file,
    sorted, at most ``max_lines`` of them (``unexpected_count`` has the full count). ``examples`` pairs a line
    with the unexpected value found there. ``error`` is set when the expectation itself could not run.
    """

    expectation: str
    column: str | None
    field: str | None
    description: str
    hint: str = ""
    unexpected_count: int | None = None
    element_count: int | None = None
    lines: tuple[int, ...] = ()
    examples: tuple[tuple[int | None, Any], ...] = ()
    observed: Any = None
    error: str | None = None
    # whether dropping the failing rows removes the problem (a row-level check that allows it, see Check)
    filterable: bool = False
    # every failing (line, value), uncapped: what policy "filter" quarantines (not written to validation.json)
    unexpected_rows: tuple[tuple[int, Any], ...] = field(default=(), repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "expectation": self.expectation,
            "column": self.column,
            "field": self.field,
            "description": self.description,
            "hint": self.hint,
            "unexpected_count": self.unexpected_count,
            "element_count": self.element_count,
            "lines": list(self.lines),
            "examples": [{"line": line, "value": jsonable(value)} for line, value in self.examples],
            "observed": jsonable(self.observed),
            "error": self.error,
            "filterable": self.filterable,
        }

    def brief(self) -> dict[str, Any]:
        """What a quarantined row records about this failure."""
        return {"expectation": self.expectation, "column": self.column, "field": self.field,
                "description": self.description}


@dataclass(frozen=True)
class TableResult:
    """The validation of one file: did it pass, and every failed expectation with its lines."""

    name: str
    source: Path
    success: bool
    rows: int
    evaluated: int
    failures: tuple[Failure, ...] = ()
    line_label: str = "line"  # "record" for JSON-list files
    docs_page: Path | None = None  # this validation's page in the Data Docs
    role: str = "data"  # "data": a validated file; "drift": the distribution checks against the previous version
    policy: str = "fail"
    rows_failing: int = 0  # distinct rows failing a row-level expectation (whatever the policy)
    rows_quarantined: int = 0  # rows moved to quarantine.jsonl (policy filter)
    rows_out: int | None = None  # rows that go on; None: all of them (policy fail)
    clean_path: Path | None = None  # policy filter: the kept rows
    verdict: str = ""  # why the policy passed or failed the table, in words

    @property
    def rows_kept(self) -> int:
        return self.rows if self.rows_out is None else self.rows_out

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": str(self.source),
            "success": self.success,
            "role": self.role,
            "rows": self.rows,
            "evaluated_expectations": self.evaluated,
            "failed_expectations": len(self.failures),
            "line_label": self.line_label,
            "docs_page": str(self.docs_page) if self.docs_page else None,
            "policy": self.policy,
            "rows_failing": self.rows_failing,
            "rows_quarantined": self.rows_quarantined,
            "rows_out": self.rows_kept,
            "clean_path": str(self.clean_path) if self.clean_path else None,
            "verdict": self.verdict,
            "failures": [failure.to_dict() for failure in self.failures],
        }


def _slug(text: str) -> str:
    return "_".join(str(text).lower().split())


def load_failure(name: str, source: Path, error: str, hint: str = "") -> TableResult:
    """A table whose file could not be read at all (missing, not JSON): no GX run, one failure naming why."""
    failure = Failure(
        expectation="file_is_readable",
        column=None,
        field=None,
        description="the file exists and holds JSONL or a JSON list of objects",
        hint=hint or "re-run the stage that writes this file, or fix the file by hand",
        error=error,
    )
    return TableResult(name=name, source=Path(source), success=False, rows=0, evaluated=0, failures=(failure,))


@dataclass(frozen=True)
class GateResult:
    """Several tables validated together (one suite family, e.g. the world); ``success`` when all passed."""

    suite: str
    tables: tuple[TableResult, ...]
    data_docs_index: Path | None = None
    report_dir: Path | None = None
    elapsed_s: float | None = None
    stats: dict[str, Any] = field(default_factory=dict)  # e.g. images checked

    @property
    def success(self) -> bool:
        return all(table.success for table in self.tables)

    @property
    def failures(self) -> list[tuple[TableResult, Failure]]:
        return [(table, failure) for table in self.tables for failure in table.failures]

    @property
    def data_tables(self) -> tuple[TableResult, ...]:
        return tuple(table for table in self.tables if table.role == "data")

    @property
    def policy(self) -> str:
        return self.tables[0].policy if self.tables else "fail"

    def summary(self) -> dict[str, Any]:
        """Flat numbers for a metrics file / MLflow: tables, rows, expectations, failures, images, seconds.

        ``rows_in == rows_out + rows_quarantined`` always (asserted when the policy is applied); under policy
        fail nothing is quarantined and ``rows_failing`` counts the rows that would have been. ``drift.<metric>``
        are the total variation distances to the previous version (absent on a first run).
        """
        data = self.data_tables
        out: dict[str, Any] = {
            "success": self.success,
            "policy": self.policy,
            "tables": len(self.tables),
            "failed_tables": sum(not table.success for table in self.tables),
            "rows": sum(table.rows for table in data),
            "rows_in": sum(table.rows for table in data),
            "rows_out": sum(table.rows_kept for table in data),
            "rows_quarantined": sum(table.rows_quarantined for table in data),
            "rows_failing": sum(table.rows_failing for table in data),
            "expectations": sum(table.evaluated for table in self.tables),
            "failed_expectations": sum(len(table.failures) for table in self.tables),
            "unexpected_rows": sum(failure.unexpected_count or 0 for _, failure in self.failures),
            "images_checked": int(self.stats.get("images_checked", 0)),
            "elapsed_s": round(self.elapsed_s or 0.0, 3),
        }
        drift = self.stats.get("drift")
        if isinstance(drift, dict):
            for metric, item in drift.items():
                if isinstance(item, dict) and item.get("tvd") is not None:
                    out[f"drift.{_slug(metric)}"] = item["tvd"]
        return out

    def failure_rows(self, max_examples: int = 1) -> list[dict[str, Any]]:
        """One dict per failed expectation (a Prefect table artefact): table, expectation, column, rows, example."""
        rows = []
        for table, failure in self.failures:
            examples = [
                f"{table.source.name}:{line} {_value_text(value, 80)}" if line is not None else _value_text(value, 80)
                for line, value in failure.examples[:max_examples]
            ]
            if not examples and failure.error:
                examples = [failure.error]
            elif not examples and failure.observed is not None:
                examples = [f"observed {_value_text(failure.observed, 80)}"]
            rows.append({
                "table": table.name,
                "expectation": failure.expectation,
                "column": failure.column or "",
                "rows": failure.unexpected_count if failure.unexpected_count is not None else "",
                "example": "; ".join(examples),
                "field": failure.field or "",
                "description": failure.description,
            })
        return rows

    def raise_if_failed(self) -> GateResult:
        """Raise :class:`GateFailed` (its message is the text report) unless every table passed."""
        if not self.success:
            raise GateFailed(self)
        return self

    # ---- renderings -----------------------------------------------------------------------------------------
    def to_text(self, max_examples: int = 5, max_lines_shown: int = 20) -> str:
        """A readable terminal report: file, expectation, field, lines, example values, what to do."""
        failed = [table for table in self.tables if not table.success]
        total = sum(len(table.failures) for table in self.tables)
        head = "PASSED" if self.success else "FAILED"
        out = [
            f"Data quality gate {self.suite!r}: {head} - {len(failed)} of {len(self.tables)} files failed, "
            f"{total} failed expectation(s)."
        ]
        if self.data_docs_index:
            out.append(f"Data Docs: {self.data_docs_index}")
        if self.report_dir:
            out.append(f"Reports:   {self.report_dir}")
        for table in self.tables:
            out.append("")
            status = "passed" if table.success else "FAILED"
            what = "metrics" if table.role == "drift" else "rows"
            out.append(
                f"{status}  {table.source}  ({table.rows} {what}, {table.evaluated} expectations, "
                f"{len(table.failures)} failed)"
            )
            if table.verdict:
                out.append(f"  policy {table.policy}: {table.verdict}")
            for number, failure in enumerate(table.failures, start=1):
                out.extend(_failure_text(table, failure, number, max_examples, max_lines_shown))
        drift = self.stats.get("drift")
        if drift:
            out.append("")
            out.append("Drift against the previous data version (total variation distance, tolerance):")
            if isinstance(drift, str):
                out.append(f"  {drift}")
            else:
                for metric, item in drift.items():
                    out.append(f"  {metric}: {item.get('text', item)}")
        if self.stats.get("quarantine"):
            out.append("")
            out.append(f"Quarantine: {self.stats['quarantine']}")
        if not self.success:
            out.append("")
            if self.policy == "filter":
                out.append(
                    "The pipeline stops here (policy: filter, but a failure cannot be fixed by dropping rows, or too "
                    "many rows are bad). Fix the producing stage (or the file) and run again; open the Data Docs "
                    "for every expectation and its result."
                )
            else:
                out.append(
                    "The pipeline stops here (policy: fail). Fix the producing stage (or the file) and run again; "
                    "open the Data Docs for every expectation and its result."
                )
        return "\n".join(out)

    def to_markdown(self, max_examples: int = 3) -> str:
        """A compact Markdown summary (a Prefect markdown artefact): one row per file, one per failure."""
        mark = "passed" if self.success else "**FAILED**"
        out = [f"# Data quality gate `{self.suite}`: {mark}", ""]
        if self.data_docs_index:
            out.append(f"Data Docs: `{self.data_docs_index}`")
            out.append("")
        counts = self.summary()
        out.append(
            f"Policy `{counts['policy']}`: {counts['rows_in']} rows in, {counts['rows_out']} out, "
            f"{counts['rows_quarantined']} quarantined ({counts['rows_failing']} failing)."
        )
        drift = self.stats.get("drift")
        if isinstance(drift, dict) and drift:
            moves = "; ".join(f"`{metric}` {item.get('tvd')}" for metric, item in drift.items())
            out.append(f"Drift (TVD to the previous version): {moves}.")
        out.append("")
        out.append("| file | rows | expectations | failed |")
        out.append("|---|---:|---:|---:|")
        for table in self.tables:
            out.append(
                f"| `{_md(str(table.source))}` | {table.rows} | {table.evaluated} | "
                f"{len(table.failures) if table.failures else 0}{'' if table.success else ' ❌'} |"
            )
        if self.failures:
            out += ["", "## Failures", "", "| file | field | expectation | rows | lines | examples |",
                    "|---|---|---|---:|---|---|"]
            for table, failure in self.failures:
                lines = _line_list(failure.lines, 10)
                examples = "; ".join(f"{_md(_value_text(value))}" for _, value in failure.examples[:max_examples])
                rows = failure.unexpected_count if failure.unexpected_count is not None else ""
                what = failure.error or failure.description
                out.append(
                    f"| `{_md(table.source.name)}` | `{_md(failure.field or '')}` | {_md(what)} "
                    f"(`{failure.expectation}`) | {rows} | {lines} | {examples} |"
                )
        return "\n".join(out) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (written as ``validation.json``)."""
        return {
            "suite": self.suite,
            "success": self.success,
            "elapsed_s": None if self.elapsed_s is None else round(self.elapsed_s, 3),
            "data_docs_index": str(self.data_docs_index) if self.data_docs_index else None,
            "stats": jsonable(self.stats),
            "summary": self.summary(),
            "tables": [table.to_dict() for table in self.tables],
        }

    def write(self, report_dir: Path) -> dict[str, Path]:
        """Write ``validation.json`` and ``report.txt`` into ``report_dir``; return their paths."""
        report_dir = Path(report_dir)
        report_dir.mkdir(parents=True, exist_ok=True)
        paths = {"json": report_dir / VALIDATION_JSON, "text": report_dir / REPORT_TXT}
        write_json(paths["json"], self.to_dict())
        paths["text"].write_text(self.to_text() + "\n", encoding="utf-8")
        return paths


class GateFailed(Exception):
    """The data-quality gate failed; ``result`` holds every failure, the message is the text report."""

    def __init__(self, result: GateResult) -> None:
        super().__init__(result.to_text())
        self.result = result


# ---- helpers ---------------------------------------------------------------------------------------------------
def _failure_text(
    table: TableResult, failure: Failure, number: int, max_examples: int, max_lines_shown: int
) -> list[str]:
    where = f" on field {failure.field!r}" if failure.field else ""
    out = [f"  [{number}] {failure.description}{where}  ({failure.expectation}"
           + (f" on column {failure.column!r})" if failure.column else ")")]
    label = table.line_label
    if failure.error:
        out.append(f"      error: {failure.error}")
    if failure.unexpected_count is not None:
        of = f" of {failure.element_count}" if failure.element_count is not None else ""
        out.append(f"      {failure.unexpected_count}{of} rows fail")
    if failure.lines:
        out.append(f"      {label}s: {_line_list(failure.lines, max_lines_shown)}")
    elif failure.observed is not None:
        out.append(f"      observed: {_value_text(failure.observed)}")
    for line, value in failure.examples[:max_examples]:
        at = f"{table.source.name}:{line}" if line is not None else table.source.name
        out.append(f"      e.g. {at}  {failure.field or label} -> {_value_text(value)}")
    if failure.hint:
        out.append(f"      what to do: {failure.hint}")
    return out


def _line_list(lines: Sequence[int], limit: int) -> str:
    shown = ", ".join(str(line) for line in lines[:limit])
    more = len(lines) - limit
    return shown + (f" ... (+{more} more)" if more > 0 else "")


def _value_text(value: Any, limit: int = 120) -> str:
    text = repr(jsonable(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def jsonable(value: Any) -> Any:
    """A JSON-serialisable copy: numpy scalars to Python, NaN to None, tuples to lists, unknowns to repr."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    item = getattr(value, "item", None)  # numpy / pandas scalars
    if callable(item):
        try:
            return jsonable(item())
        except (TypeError, ValueError):
            pass
    return repr(value)
