"""The project's Prefect pipeline flow, flows/pipeline.py, loaded from its file (flows/ lives beside src/, per the
project layout, and is no installed package). `silkfire run`/`serve` and `silkfire sweep --mode flow` run it.

Part of the orchestration layer with silkfire.cli and silkfire.sweeps (pyproject.toml's import-linter contracts):
no library module imports it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from collections.abc import Callable
from types import ModuleType
from typing import Any

FLOW_MODULE = "silkfire_pipeline_flow"


def load_flow_module(root: Path | None = None) -> ModuleType:
    """Import flows/pipeline.py of the project (flows/ lives beside src/, per the project layout).

    The module is registered in sys.modules so Prefect can find the flow's source file for deployments.
    """
    from silkfire.config import project_root

    path = (root or project_root()) / "flows" / "pipeline.py"
    spec = importlib.util.spec_from_file_location(FLOW_MODULE, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load the pipeline flow from {path}")
    # Offline by design: the temporary Prefect server would log a failed telemetry call in every run (Prefect reads
    # its settings when it is first imported, which the flow module does).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    module = importlib.util.module_from_spec(spec)
    sys.modules[FLOW_MODULE] = module
    spec.loader.exec_module(module)
    return module


def flow_runner(root: Path) -> Callable[[list[str]], Any]:
    """Run the pipeline flow on Hydra overrides, without pushing (what a sweep point or an alignment round does)."""
    flows = load_flow_module(root)
    return lambda overrides: flows.pipeline(overrides=overrides, push_to_remote=False)


def latest_pipeline_run(client: Any, experiment_id: str, since_ms: int) -> str:
    """The MLflow `pipeline` run the flow just started (the newest since ``since_ms``)."""
    runs = client.search_runs([experiment_id],
                              f"tags.`silkfire.kind` = 'pipeline' and attributes.start_time >= {since_ms}",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise RuntimeError("the flow finished but its MLflow `pipeline` run was not found")
    return runs[0].info.run_id
