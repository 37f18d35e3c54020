"""Distribution checks against the previous data version: a small profile per gate run, drift as TVD.

A profile (``<report_dir>/profile.json``) holds, per metric, the counts of each category (rating "1".."5",
answer "Yes"/"No", ...), the ``top_k`` largest kept and the rest pooled as ``"<other>"``. The next version's
gate reads it (``previous_profile``) and compares each metric by the total variation distance
``TVD = 0.5 * sum_c |p_c - q_c|`` (0: same distribution, 1: disjoint), against ``drift.max_tvd`` or the
metric's own tolerance. The comparison is one more GX table (``<gate>.drift``, one row per metric), so a
drift failure lands in the same report and Data Docs as every other check. A first run (no previous profile)
has nothing to compare with and passes; a metric with fewer than ``min_rows`` values on either side is
reported but not checked.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from silkfire.io import write_json
from silkfire.quality.config import DriftConfig
from silkfire.quality.derive import OK, is_null
from silkfire.quality.gate import PreparedTable, Suite, is_ok
from silkfire.quality.frames import JSON, LINE, LoadedRecords

PROFILE_VERSION = 1
OTHER = "<other>"


def count_values(values: Iterable[Any] | pd.Series) -> Counter[str]:
    """Category counts of a column (nulls left out; categories as strings, so JSON keeps them)."""
    if isinstance(values, pd.Series):
        counts: Counter[str] = Counter()
        for value, count in values.value_counts(dropna=True).items():  # hashing in C, not a Python loop
            if count:
                counts[_category(value)] += int(count)
        return counts
    return Counter(_category(value) for value in values if not is_null(value))


def _category(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # a round of 2 read back from a float column is "2", not "2.0"
    return str(value)


def build_profile(gate: str, metrics: Mapping[str, Counter[str]], config: DriftConfig) -> dict[str, Any]:
    """The JSON-ready profile: per metric its total and the counts of its top_k categories (+ "<other>")."""
    out: dict[str, Any] = {}
    for metric, counts in sorted(metrics.items()):
        top = counts.most_common(config.top_k)
        kept = dict(sorted(top))
        rest = sum(counts.values()) - sum(kept.values())
        if rest:
            kept[OTHER] = kept.get(OTHER, 0) + rest
        out[metric] = {"total": sum(counts.values()), "counts": kept}
    return {"version": PROFILE_VERSION, "gate": gate, "metrics": out}


def write_profile(report_dir: Path, profile: Mapping[str, Any]) -> Path:
    from silkfire.quality.report import PROFILE_JSON

    path = Path(report_dir) / PROFILE_JSON
    write_json(path, profile)
    return path


def load_profile(path: str | Path) -> dict[str, Any]:
    """Read a previous profile; a missing or malformed one raises ValueError saying what to do."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(
            f"previous profile {path} cannot be read ({error}); pass the profile.json of the previous gate run, "
            "or none on a first run"
        ) from error
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise ValueError(f"previous profile {path}: expected {{'version', 'gate', 'metrics'}}, see docs/quality.md")
    return data


def tvd(current: Mapping[str, int], previous: Mapping[str, int]) -> float:
    """Total variation distance between two count tables (categories missing on one side count 0)."""
    total_c, total_p = sum(current.values()), sum(previous.values())
    if not total_c or not total_p:
        return 0.0
    keys = set(current) | set(previous)
    return 0.5 * sum(abs(current.get(k, 0) / total_c - previous.get(k, 0) / total_p) for k in keys)


def compare(current: Mapping[str, Any], previous: Mapping[str, Any], config: DriftConfig) -> dict[str, dict[str, Any]]:
    """metric -> {tvd, tolerance, rows, previous_rows, status, text} for every metric of the current profile."""
    out: dict[str, dict[str, Any]] = {}
    before = previous.get("metrics", {})
    for metric, now in current.get("metrics", {}).items():
        tolerance = config.tolerance(metric)
        old = before.get(metric)
        if not isinstance(old, dict) or not isinstance(old.get("counts"), dict):
            out[metric] = {"tvd": None, "tolerance": tolerance, "rows": now["total"], "previous_rows": 0,
                           "status": OK, "text": "new metric (not in the previous profile): not checked"}
            continue
        counts_now, counts_old = _pooled(now["counts"], old["counts"])
        distance = round(tvd(counts_now, counts_old), 4)
        rows, previous_rows = int(now["total"]), int(old.get("total", sum(counts_old.values())))
        detail = _moves(counts_now, counts_old)
        if min(rows, previous_rows) < config.min_rows:
            status, verdict = OK, f"not checked: fewer than min_rows {config.min_rows} values"
        elif distance > tolerance:
            status = verdict = f"TVD {distance:.3f} > tolerance {tolerance:.3f} ({detail})"
        else:
            status, verdict = OK, "ok"
        out[metric] = {
            "tvd": distance, "tolerance": tolerance, "rows": rows, "previous_rows": previous_rows,
            "status": status,
            "text": f"TVD {distance:.3f} (tolerance {tolerance:.3f}; {previous_rows} -> {rows} values; {detail})"
            + ("" if verdict in ("ok",) or status != OK else f" - {verdict}"),
        }
    return out


def drift_table(gate: str, drift: Mapping[str, Mapping[str, Any]], previous_path: Path) -> PreparedTable:
    """The GX table of the drift checks: one row per metric (line = its position), ``drift__status`` asserted."""
    metrics = list(drift)
    frame = pd.DataFrame({
        LINE: list(range(1, len(metrics) + 1)),
        JSON: [OK] * len(metrics),
        "metric": metrics,
        "tvd": [drift[m]["tvd"] for m in metrics],
        "tolerance": [drift[m]["tolerance"] for m in metrics],
        "drift__status": [drift[m]["status"] if drift[m]["status"] == OK else f"{m}: {drift[m]['status']}"
                          for m in metrics],
    })
    suite = Suite(f"{gate}.drift", (
        is_ok("drift__status",
              "each distribution (ratings, answers, types, ...) stays within its TVD tolerance of the previous "
              "data version",
              "if the change is intended, raise quality.drift.max_tvd (or quality.drift.tolerances.<metric>) for "
              "this run; otherwise find what changed in the producing stage", field="drift", filterable=False),
    ))
    loaded = LoadedRecords(Path(previous_path), (), tuple(frame[LINE]), (OK,) * len(metrics), line_label="metric")
    return PreparedTable(suite.name, loaded, frame, suite, role="drift")


def _pooled(now: Mapping[str, int], old: Mapping[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """Both tables over the same categories: a category pooled into "<other>" on one side is pooled on both."""
    now, old = dict(now), dict(old)
    for a, b in ((now, old), (old, now)):
        if OTHER in b:
            for key in [key for key in a if key not in b and key != OTHER]:
                a[OTHER] = a.get(OTHER, 0) + a.pop(key)
    return now, old


def _moves(now: Mapping[str, int], old: Mapping[str, int], limit: int = 3) -> str:
    """The categories whose share moved most: "Yes 0.50->0.73, No 0.50->0.27"."""
    total_n, total_o = sum(now.values()) or 1, sum(old.values()) or 1
    keys = set(now) | set(old)
    moves = sorted(keys, key=lambda k: -abs(now.get(k, 0) / total_n - old.get(k, 0) / total_o))[:limit]
    return ", ".join(f"{k} {old.get(k, 0) / total_o:.2f}->{now.get(k, 0) / total_n:.2f}" for k in moves)
