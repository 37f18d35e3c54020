"""Silkfire: the data-quality gate (Great Expectations, imported lazily).

- ``gate``: checks as plain data (``Check``, ``Suite``), ``validate_table``, ``run_gate`` over several files.
- ``records``: record files as frames with line numbers (broken lines become failures, not crashes).
- ``derive``: checks GX cannot express (images, Yes/No pairs, lookups), as columns GX then asserts.
- ``report``: ``TableResult``, ``GateResult`` (text / Markdown / JSON / summary), ``GateFailed``.
- ``config``: ``QualityConfig`` (conf/quality/default.yaml).
- ``world``: ``validate_world``, the suite for the generate stage's output.

The names below are imported on first use, so ``import silkfire.quality`` stays cheap (no pandas, no GX).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Check": "gate",
    "Suite": "gate",
    "PreparedTable": "gate",
    "validate_table": "gate",
    "run_gate": "gate",
    "Failure": "report",
    "TableResult": "report",
    "GateResult": "report",
    "GateFailed": "report",
    "QualityConfig": "config",
    "validate_world": "world",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'silkfire.quality' has no attribute {name!r}")
    return getattr(importlib.import_module(f"silkfire.quality.{_EXPORTS[name]}"), name)
