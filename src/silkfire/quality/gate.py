"""The gate mechanism: checks declared as plain data, run by Great Expectations, read back as typed results.

Great Expectations is imported lazily (4-9 s): only when a table is actually validated. One ephemeral GX
context per Data Docs folder lives for the process, so the tables of a gate share one static Data Docs site
(``<docs_dir>/index.html``) written by the checkpoint's ``UpdateDataDocsAction``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd

from silkfire.quality.frames import LINE, LoadedRecords
from silkfire.quality.report import DATA_DOCS_DIR, Failure, GateResult, TableResult, load_failure

SITE = "silkfire"
DATASOURCE = "silkfire"
_CHECK_KEY = "silkfire_check"  # meta key that maps a GX result back to its Check


@dataclass(frozen=True)
class Check:
    """One expectation as plain data: a GX expectation name, its kwargs, and words for humans.

    ``expectation`` is the snake_case GX name (``expect_column_values_to_be_in_set``); ``kwargs`` are that
    expectation's arguments (``column``, ``value_set``, ...). ``description`` says what must hold,
    ``hint`` what to do when it does not. ``field`` names the record field the check is about when the
    column is a derived one (``image__status`` -> ``image``); it defaults to the column's prefix.
    ``filterable``: under policy "filter", dropping the failing rows removes the problem (False for checks
    whose verdict depends on the rows' positions, e.g. MMHal's type interleaving; table-level expectations
    such as row counts are never filterable, they name no rows).
    """

    expectation: str
    kwargs: Mapping[str, Any]
    description: str
    hint: str = ""
    field: str | None = None
    filterable: bool = True

    @property
    def column(self) -> str | None:
        return column_label(self.kwargs)

    @property
    def record_field(self) -> str | None:
        if self.field is not None:
            return self.field
        column = self.column
        if column is None:
            return None
        return ",".join(part.split("__")[0] or part for part in column.split(","))


@dataclass(frozen=True)
class Suite:
    """A named group of checks (one per table kind: ``world.mme``, ``world.scenes``, ...)."""

    name: str
    checks: tuple[Check, ...] = field(default_factory=tuple)


def column_label(kwargs: Mapping[str, Any]) -> str | None:
    """The column(s) an expectation reads, as one label: "id", "image,prompt", "chosen_score,rejected_score"."""
    if "column" in kwargs:
        return str(kwargs["column"])
    if "column_list" in kwargs:
        return ",".join(map(str, kwargs["column_list"]))
    if "column_A" in kwargs and "column_B" in kwargs:
        return f"{kwargs['column_A']},{kwargs['column_B']}"
    return None


# ---- a few constructors that keep suites short ------------------------------------------------------------------
def in_set(
    column: str, values: Sequence[Any], description: str, hint: str = "", field: str | None = None,
    filterable: bool = True,
) -> Check:
    kwargs = {"column": column, "value_set": list(values)}
    return Check("expect_column_values_to_be_in_set", kwargs, description, hint, field, filterable)


def is_ok(column: str, description: str, hint: str = "", field: str | None = None, filterable: bool = True) -> Check:
    """A derived status column (see ``silkfire.quality.derive``) must say "ok" on every row."""
    return in_set(column, ["ok"], description, hint, field, filterable)


def unique(column: str, description: str, hint: str = "") -> Check:
    return Check("expect_column_values_to_be_unique", {"column": column}, description, hint)


def between(
    column: str, low: float | None, high: float | None, description: str, hint: str = "", field: str | None = None,
    mostly: float | None = None,
) -> Check:
    kwargs: dict[str, Any] = {"column": column, "min_value": low, "max_value": high}
    if mostly is not None:
        kwargs["mostly"] = mostly
    return Check("expect_column_values_to_be_between", kwargs, description, hint, field)


def matches(column: str, regex: str, description: str, hint: str = "") -> Check:
    return Check("expect_column_values_to_match_regex", {"column": column, "regex": regex}, description, hint)


def max_length(column: str, limit: int, description: str, hint: str = "") -> Check:
    return Check("expect_column_value_lengths_to_be_between", {"column": column, "max_value": limit}, description, hint)


def compound_unique(columns: Sequence[str], description: str, hint: str = "", field: str | None = None) -> Check:
    return Check("expect_compound_columns_to_be_unique", {"column_list": list(columns)}, description, hint, field)


def greater(column_a: str, column_b: str, description: str, hint: str = "") -> Check:
    """Row-wise ``column_a > column_b`` (rows where either is null are skipped: the type checks report them)."""
    kwargs = {"column_A": column_a, "column_B": column_b, "ignore_row_if": "either_value_is_missing"}
    return Check("expect_column_pair_values_a_to_be_greater_than_b", kwargs, description, hint)


def row_count(low: int, description: str, hint: str = "") -> Check:
    return Check("expect_table_row_count_to_be_between", {"min_value": low}, description, hint)


# ---- Great Expectations session ---------------------------------------------------------------------------------
def import_gx() -> Any:
    """Import great_expectations (slow: 4-9 s) with analytics off."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx


class GxSession:
    """An ephemeral GX context whose only Data Docs site is a static folder (``docs_dir``)."""

    def __init__(self, docs_dir: Path) -> None:
        gx = import_gx()
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        self.gx = gx
        self.docs_dir = Path(docs_dir).resolve()
        site = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(self.docs_dir)},
        }
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            data_docs_sites={SITE: site},
            progress_bars=ProgressBarsConfig(globally=False),  # no GX progress bars in pipeline logs
            analytics_enabled=False,
        )
        self.context = gx.get_context(mode="ephemeral", project_config=config)
        self.datasource = self.context.data_sources.add_pandas(DATASOURCE)
        self._runs = 0

    @property
    def index(self) -> Path:
        return self.docs_dir / "index.html"

    def expectation(self, check: Check, position: int) -> Any:
        cls = expectation_class(check.expectation)
        label = f"{check.description} [{check.expectation}]"
        notes = [f"What to do: {check.hint}"] if check.hint else None
        try:
            return cls(**dict(check.kwargs), description=label, notes=notes, meta={_CHECK_KEY: position})
        except Exception as error:  # pydantic validation of the kwargs: name the check, not GX internals
            raise ValueError(f"check {check.description!r}: bad arguments for {check.expectation}: {error}") from error

    def run(
        self, name: str, frame: pd.DataFrame, checks: Sequence[Check], *, build_docs: bool = True
    ) -> tuple[Any, Path | None]:
        """Validate ``frame`` against ``checks``; return the GX validation result and its Data Docs page.

        ``build_docs=False`` leaves the Data Docs to one :meth:`build_docs` call after several tables (the
        site renderer costs ~0.3 s per build).
        """
        gx = self.gx
        self._runs += 1
        run_name = f"{name}#{self._runs}"
        if name in self.datasource.get_asset_names():
            self.datasource.delete_asset(name)
        batch = self.datasource.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe("whole")
        # add (not add_or_update: that compares with the stored copy and costs ~0.4 s a call)
        if name in {suite.name for suite in self.context.suites.all()}:
            self.context.suites.delete(name)
        suite = self.context.suites.add(
            gx.ExpectationSuite(name=name, expectations=[self.expectation(c, i) for i, c in enumerate(checks)])
        )
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=run_name, data=batch, suite=suite)
        )
        actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[SITE])] if build_docs else []
        checkpoint = self.context.checkpoints.add(
            gx.Checkpoint(
                name=run_name,
                validation_definitions=[definition],
                actions=actions,
                result_format={"result_format": "COMPLETE"},  # every failing row index, not just 20
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        ((identifier, validation),) = result.run_results.items()
        return validation, self._page(identifier)

    def build_docs(self) -> Path:
        """(Re)build the whole static site from every validation of this session; return its index.html."""
        self.context.build_data_docs(site_names=[SITE])
        return self.index

    def _page(self, identifier: Any) -> Path | None:
        for site in self.context.get_docs_sites_urls(
            resource_identifier=identifier, site_names=[SITE], only_if_exists=False
        ):
            url = site.get("site_url")
            if url and url.startswith("file://"):
                return Path(unquote(urlparse(url).path))
        return None


_SESSIONS: dict[Path, GxSession] = {}


def gx_session(docs_dir: str | Path, *, fresh: bool = False) -> GxSession:
    """The process's GX session writing Data Docs into ``docs_dir``; ``fresh`` empties the folder first."""
    key = Path(docs_dir).resolve()
    if fresh:
        _SESSIONS.pop(key, None)
        if key.exists():
            shutil.rmtree(key)
    if key not in _SESSIONS:
        key.mkdir(parents=True, exist_ok=True)
        _SESSIONS[key] = GxSession(key)
    return _SESSIONS[key]


def expectation_class(name: str) -> type:
    """``expect_column_values_to_be_in_set`` -> ``gx.expectations.ExpectColumnValuesToBeInSet``."""
    gx = import_gx()
    class_name = "".join(part.capitalize() for part in name.split("_"))
    cls = getattr(gx.expectations, class_name, None)
    if cls is None:
        raise ValueError(f"unknown Great Expectations expectation {name!r} (no gx.expectations.{class_name})")
    return cls


# ---- validating a table -----------------------------------------------------------------------------------------
def validate_table(
    name: str,
    frame: pd.DataFrame,
    checks: Sequence[Check] | Suite,
    *,
    source: Path,
    docs_dir: Path,
    line_label: str = "line",
    max_examples: int = 5,
    max_lines: int = 1000,
    build_docs: bool = True,
) -> TableResult:
    """Run ``checks`` on ``frame`` with GX and return what failed, mapped back to lines of ``source``.

    ``frame`` should carry a ``__line__`` column (the record's line in ``source``, see
    ``silkfire.quality.frames``); without it the row position + 1 is used. The validation page is added to
    the static Data Docs site in ``docs_dir`` (with ``build_docs=False``, call ``gx_session(docs_dir).build_docs()``
    once after the last table).
    """
    if isinstance(checks, Suite):
        checks = checks.checks
    checks = tuple(checks)
    # Index the frame by source line, so GX's failing indices (and the Data Docs' "Index" column) are lines.
    rows = len(frame)
    if LINE in frame.columns and frame[LINE].is_unique:
        frame = frame.set_index(pd.Index(frame[LINE].to_numpy(dtype="int64")), drop=False)
        lines: Callable[[Any], int | None] = _as_line
    else:
        frame = frame.set_index(pd.RangeIndex(1, rows + 1))
        numbers = frame[LINE].tolist() if LINE in frame.columns else None
        lines = _as_line if numbers is None else (lambda index: _at(numbers, index))
    frame = gx_frame(frame, checks)
    session = gx_session(docs_dir)
    validation, page = session.run(name, frame, checks, build_docs=build_docs)

    failures: list[tuple[int, Failure]] = []
    evaluated = 0
    for outcome in validation.results:
        evaluated += 1
        if outcome.success:
            continue
        config = outcome.expectation_config
        position = (config.meta or {}).get(_CHECK_KEY)
        check = checks[position] if isinstance(position, int) and position < len(checks) else None
        rank = position if check is not None else len(checks)
        failures.append((rank, _failure(outcome, check, lines, max_examples, max_lines)))
    failures.sort(key=lambda pair: pair[0])  # report in the order the suite declares its checks
    return TableResult(
        name=name,
        source=Path(source),
        success=bool(validation.success),
        rows=rows,
        evaluated=evaluated,
        failures=tuple(failure for _, failure in failures),
        line_label=line_label,
        docs_page=page,
    )


def _as_line(index: Any) -> int | None:
    try:
        return int(index)
    except (TypeError, ValueError):
        return None


def _at(numbers: Sequence[Any], index: Any) -> int | None:
    position = _as_line(index)
    if position is None or not 1 <= position <= len(numbers):
        return None
    return int(numbers[position - 1])


def gx_frame(frame: pd.DataFrame, checks: Sequence[Check]) -> pd.DataFrame:
    """The frame GX validates: only the columns the checks read, in compact dtypes.

    GX's pandas engine filters the *whole* frame once per expectation (null filtering, unexpected rows), so
    its cost grows with columns x rows x expectations: on a million FIRE rows 29 expectations took ~50 s on
    the full frame of object / Arrow string columns, ~8 s on the referenced columns as categoricals (a
    ``take`` then copies integer codes, not a million string references). Values are unchanged: string
    columns become categoricals of the same strings, numeric object columns (counts with None) floats.
    """
    used: list[str] = [LINE] if LINE in frame.columns else []
    for check in checks:
        for key in ("column", "column_A", "column_B"):
            if key in check.kwargs and check.kwargs[key] not in used:
                used.append(str(check.kwargs[key]))
        used += [str(name) for name in check.kwargs.get("column_list", ()) if name not in used]
    present = [name for name in used if name in frame.columns]  # a missing column fails its expectation
    out = frame[present].copy()
    for name in present:
        if name == LINE:
            continue
        column = out[name]
        if isinstance(column.dtype, pd.CategoricalDtype) or column.dtype.kind in "iufb":
            continue
        inferred = pd.api.types.infer_dtype(column, skipna=True)
        if inferred == "string":
            out[name] = column.astype("category")
        elif inferred in ("integer", "floating", "mixed-integer-float"):
            out[name] = pd.to_numeric(column, errors="coerce").astype("float64")
    return out


def _failure(
    outcome: Any, check: Check | None, lines: Callable[[Any], int | None], max_examples: int, max_lines: int
) -> Failure:
    config = outcome.expectation_config
    result: dict[str, Any] = dict(outcome.result or {})
    info = outcome.exception_info or {}
    error = None
    if isinstance(info, Mapping) and info.get("raised_exception"):
        error = str(info.get("exception_message") or "the expectation raised an exception")
    column = column_label(dict(config.kwargs))
    indices = result.get("unexpected_index_list") or []
    values = result.get("unexpected_list") or []
    failing_lines: list[int] = []
    located: list[tuple[int | None, Any]] = []
    for position, index in enumerate(indices):
        if isinstance(index, Mapping):  # with unexpected_index_column_names GX gives dicts
            index = next(iter(index.values()))
        line = lines(index)
        if line is None:
            continue
        failing_lines.append(line)
        located.append((line, _plain_value(values[position]) if position < len(values) else None))
    rows = tuple((line, value) for line, value in located if line is not None)
    if not indices and values:
        located = [(None, _plain_value(value)) for value in values]
    return Failure(
        expectation=config.type,
        column=column,
        field=check.record_field if check else column,
        description=check.description if check else (config.description or config.type),
        hint=check.hint if check else "",
        unexpected_count=result.get("unexpected_count"),
        element_count=result.get("element_count"),
        lines=tuple(sorted(set(failing_lines))[:max_lines]),
        examples=_examples(located, max_examples),
        observed=result.get("observed_value"),
        error=error,
        filterable=bool(rows) and error is None and check is not None and check.filterable,
        unexpected_rows=rows,
    )


def _plain_value(value: Any) -> Any:
    """A count stored as a float (GX needs numeric columns) reads back as the integer it is; numpy scalars
    (also inside the tuples of column-pair expectations) as Python numbers."""
    if isinstance(value, tuple):
        return tuple(_plain_value(item) for item in value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and not isinstance(value, (str, bytes)):
        try:
            return _plain_value(item())
        except (TypeError, ValueError):
            return value
    return value


def _examples(located: Sequence[tuple[int | None, Any]], limit: int) -> tuple[tuple[int | None, Any], ...]:
    """Up to ``limit`` (line, value) pairs, one per distinct value first (16 rows with the same reason would
    hide a second reason), then more lines in order."""
    chosen: list[int] = []
    seen: set[str] = set()
    for position, (_, value) in enumerate(located):
        key = repr(value)
        if key not in seen:
            seen.add(key)
            chosen.append(position)
        if len(chosen) >= limit:
            break
    for position in range(len(located)):
        if len(chosen) >= limit:
            break
        if position not in chosen:
            chosen.append(position)
    return tuple(located[position] for position in sorted(chosen))


# ---- a gate over several tables --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PreparedTable:
    """One file ready for the gate: its records, the frame with derived columns, the suite to run on it.

    ``frame``/``suite`` are None when the file could not be read (``loaded.error``): the table then fails with
    one ``file_is_readable`` failure and ``hint``. ``group``: a column whose rows stand or fall together under
    policy "filter" (MME's question_id: dropping one question of a Yes/No pair drops the other).
    ``role`` "drift" marks the distribution checks (one row per metric, not a data file).
    """

    name: str
    loaded: LoadedRecords
    frame: pd.DataFrame | None = None
    suite: Suite | None = None
    hint: str = ""
    group: str | None = None
    role: str = "data"


def run_gate(
    gate: str,
    tables: Sequence[PreparedTable],
    *,
    report_dir: str | Path,
    max_examples: int = 5,
    max_lines: int = 1000,
    stats: Mapping[str, Any] | None = None,
    started: float | None = None,
    policy: str = "fail",
    max_quarantine_fraction: float = 1.0,
    data_docs: bool = True,
) -> GateResult:
    """Validate every table into one fresh Data Docs site (``report_dir/data_docs``); write the reports.

    Writes ``validation.json`` and ``report.txt`` to ``report_dir`` and returns the :class:`GateResult`
    (``stats`` gains ``gx_s``, the seconds spent in GX including the Data Docs). ``started`` is the
    ``time.perf_counter()`` when the caller began loading, so ``elapsed_s`` covers the whole gate.
    ``policy`` "filter" also writes ``quarantine.jsonl`` and ``clean/<file>`` (see ``silkfire.quality.policy``).
    """
    from silkfire.quality.policy import Quarantine, apply_policy

    start = time.perf_counter()
    report_dir = Path(report_dir)
    docs_dir = report_dir / DATA_DOCS_DIR
    session = gx_session(docs_dir, fresh=True)  # a clean site: only this run's validations
    results: list[TableResult] = []
    with Quarantine(report_dir, enabled=policy == "filter") as quarantine:
        for table in tables:
            if table.frame is None or table.suite is None:
                error = table.loaded.error or "the file could not be read"
                results.append(dataclasses.replace(
                    load_failure(table.name, table.loaded.path, error, table.hint), policy=policy, role=table.role,
                    verdict="the file cannot be read: nothing to filter" if policy == "filter" else "",
                ))
                continue
            checked = validate_table(
                table.name,
                table.frame,
                table.suite,
                source=table.loaded.path,
                docs_dir=docs_dir,
                line_label=table.loaded.line_label,
                max_examples=max_examples,
                max_lines=max_lines,
                build_docs=False,
            )
            checked = dataclasses.replace(checked, role=table.role)
            if table.role == "data":
                checked = apply_policy(checked, table.frame, table.group, policy, max_quarantine_fraction, quarantine)
            else:
                checked = dataclasses.replace(checked, policy=policy)
            results.append(checked)
    if data_docs:
        session.build_docs()  # once for all tables: every build re-renders the site
    gx_s = time.perf_counter() - start
    extra = {"gx_s": round(gx_s, 3)}
    if quarantine.enabled:
        extra["quarantine"] = f"{quarantine.count} row(s) in {quarantine.path}"
    result = GateResult(
        suite=gate,
        tables=tuple(results),
        data_docs_index=session.index if data_docs and session.index.exists() else None,
        report_dir=report_dir,
        elapsed_s=time.perf_counter() - (start if started is None else started),
        stats={**dict(stats or {}), **extra},
    )
    result.write(report_dir)
    return result
