"""Silkfire: the data-quality gate (Great Expectations, imported lazily).

- ``gate``: checks as plain data (``Check``, ``Suite``), ``validate_table``, ``run_gate`` over several files.
- ``records``: record files as frames with line numbers (broken lines become failures, not crashes).
- ``derive``: checks GX cannot express (images, Yes/No pairs, lookups), as columns GX then asserts.
- ``report``: ``TableResult``, ``GateResult`` (text / Markdown / JSON / summary), ``GateFailed``.
- ``config``: ``QualityConfig`` (conf/quality/default.yaml).
- ``policy``: policy "filter": quarantine.jsonl + clean files, rows in = rows out + rows quarantined.
- ``profile``: profile.json per run, drift (TVD) against the previous data version.
- ``kinds``: ``KindSpec`` + ``validate_file``: one file of a published format through the gate.
- ``world``: ``validate_world``, the suite for the generate stage's output.
- ``vlfeedback``, ``pairs``, ``fire``, ``mme``, ``mmhal``: ``validate_<kind>(path, config, report_dir, image_root)``.
- ``cli``: ``validate_command`` behind ``silkfire validate KIND PATH [--image-root DIR]``.

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
    "validate_vlfeedback": "vlfeedback",
    "validate_pairs": "pairs",
    "validate_fire": "fire",
    "validate_mme": "mme",
    "validate_mmhal": "mmhal",
    "validate": "cli",
    "validate_command": "cli",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'silkfire.quality' has no attribute {name!r}")
    return getattr(importlib.import_module(f"silkfire.quality.{_EXPORTS[name]}"), name)
