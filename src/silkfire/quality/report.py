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
        }


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": str(self.source),
            "success": self.success,
            "rows": self.rows,
            "evaluated_expectations": self.evaluated,
            "failed_expectations": len(self.failures),
            "line_label": self.line_label,
            "docs_page": str(self.docs_page) if self.docs_page else None,
            "failures": [failure.to_dict() for failure in self.failures],
        }


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

    def summary(self) -> dict[str, Any]:
        """Flat numbers for a metrics file / MLflow: tables, rows, expectations, failures, images, seconds."""
        return {
            "success": self.success,
            "tables": len(self.tables),
            "failed_tables": sum(not table.success for table in self.tables),
            "rows": sum(table.rows for table in self.tables),
            "expectations": sum(table.evaluated for table in self.tables),
            "failed_expectations": sum(len(table.failures) for table in self.tables),
            "unexpected_rows": sum(failure.unexpected_count or 0 for _, failure in self.failures),
            "images_checked": int(self.stats.get("images_checked", 0)),
            "elapsed_s": round(self.elapsed_s or 0.0, 3),
        }

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
            out.append(
                f"{status}  {table.source}  ({table.rows} rows, {table.evaluated} expectations, "
                f"{len(table.failures)} failed)"
            )
            for number, failure in enumerate(table.failures, start=1):
                out.extend(_failure_text(table, failure, number, max_examples, max_lines_shown))
        if not self.success:
            out.append("")
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
