"""The MLflow UI as a person sees it: a smoke pipeline run, then benchmarks/ui_check.py in headless Chromium
(Debian's `chromium`), no network. Slow (~4 min pipeline + ~1 min of page renders on 2 cores); skipped without
chromium."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_ui_pages_show_runs_metrics_registry_gate_report_and_dvc_plots(prefect_server: None, project: Path) -> None:
    from silkfire.cli import load_flow_module

    load_flow_module(project).pipeline(overrides=["experiment=smoke"], push_to_remote=False)
    spec = importlib.util.spec_from_file_location("ui_check", ROOT / "benchmarks" / "ui_check.py")
    ui_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ui_check)
    out = project / "reports" / "ui"
    assert ui_check.main(["--root", str(project), "--out", str(out)]) == 0, (out / "README.md").read_text()
    shots = sorted(path.name for path in out.glob("*.png"))
    assert len(shots) == 7 and all((out / name).stat().st_size > 10_000 for name in shots), shots
