"""benchmarks/dpo_vs_trl.py end to end at toy size: 1 round, 3 steps of 2 pairs (needs the bench extra: trl)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_dpo_vs_trl_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "dpo_vs_trl.py"), "--steps", "3", "--warmup", "1", "--batch", "2",
         "--pairs", "8", "--rounds", "1", "--max-load", "1000", "--settle", "0", "--matmul-size", "256",
         "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    record = json.loads(out.read_text())
    for key in ("args", "date", "git_commit", "cpu_model", "threads", "versions", "check", "summary", "rounds",
                "table"):
        assert key in record, key
    assert record["check"]["tokens_identical"] and record["check"]["pixels_identical"]
    assert record["check"]["loss_diff_off"] < 1e-4 and record["check"]["loss_diff_on"] < 1e-4
    assert record["check"]["matmul"]["peak_flops"] > 0 and record["check"]["model_flops_per_pair"] > 0
    (round_,) = record["rounds"]
    assert {"load_before", "load_after", "refused", "order", "results"} <= set(round_)
    sides = {"ours-sp_off-gbl_off", "ours-sp_on-gbl_off", "ours-sp_off-gbl_on", "ours-sp_on-gbl_on", "trl"}
    assert set(round_["results"]) == sides
    for result in round_["results"].values():
        assert len(result["step_end_seconds"]) == 3
        for key in ("steady_pairs_per_second", "end_to_end_pairs_per_second", "peak_rss_growth_mb", "mfu_percent"):
            assert result[key] == result[key], key  # not NaN
    assert set(record["summary"]["ratios_ours_over_trl"]) == sides - {"trl"}
    assert "ratios ours/TRL" in completed.stdout
