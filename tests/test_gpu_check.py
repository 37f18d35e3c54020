"""benchmarks/gpu_check.py: the GPU proof script runs here on the CPU at tiny sizes (slow test: ~2 minutes), a GPU
asked for on this machine stops it at once, and its table has the columns docs/scaling.md shows."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from silkfire.runtime import Runtime, RuntimeConfigError

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_table_has_stage_device_dtype_seconds_throughput_and_peak_memory() -> None:
    gpu_check = _module()
    meter = gpu_check.Meter(Runtime("cuda:0", "bfloat16"))
    meter.seconds, meter.peak = 12.345, 3 * 1024 ** 3
    rows = [gpu_check.row("throughput", "sft llava-1.4b (batch 8)", Runtime("cuda:0", "bfloat16"), meter, 41.27),
            gpu_check.row("smoke", "evaluate", Runtime("cpu", "float32"), None, status="FAILED: x")]
    text = gpu_check.table(rows)
    assert text.splitlines()[0] == ("| phase | stage | device | dtype | seconds | samples/s | peak GPU memory (GiB) "
                                    "| status |")
    assert "| throughput | sft llava-1.4b (batch 8) | cuda:0 | bfloat16 | 12.35 | 41.27 | 3.0 | ok |" in text
    assert "| smoke | evaluate | cpu | float32 | - | - | - | FAILED: x |" in text


def test_a_gpu_asked_for_on_this_machine_stops_it_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(RuntimeConfigError, match="no CUDA GPU"):
        _module().main(["--device", "cuda", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_it_runs_both_branches_and_the_throughput_phase_on_the_cpu(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert _module().main(["--device", "cpu", "--tiny", "--threads", "2", "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    stages = [r["stage"] for r in report["rows"]]
    assert stages[:6] == ["generate", "validate", "base", "sft", "evaluate", "register"]
    assert {"dpo", "evaluate_dpo", "fire_student", "fire_teacher", "fire_bench"} <= set(stages)
    assert all(r["status"] == "ok" and r["device"] == "cpu" for r in report["rows"])
    assert report["rows"][-1]["samples_per_second"] > 0 and (tmp_path / "out" / "gpu_check.md").is_file()
