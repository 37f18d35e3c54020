"""The silkie `sample` and `annotate` stages fanned out over Prefect thread shards (`silkie.fanout`) give the
records and summed counters of one process -- on the oracle judge with model policies in the pool, and on the
API judge against a fault-injecting server -- and a shard over `fanout.timeout_s` fails naming its records."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from silkfire.config import compose
from silkfire.fanout import FanoutConfig, ShardTimeout, fan_out_shards, sum_metrics
from silkfire.vlfeedback.cache import AnnotationCache
from silkfire.vlfeedback.template import ASPECT_ORDER
from silkfire.llm.testing import FakeChatServer
from silkfire.models.testing import make_test_model, make_test_world
from silkfire.stages.runner import run_stage

ROOT = Path(__file__).resolve().parents[2]
TINY = ["experiment=silkie", "silkie.sample.max_instructions=16", "silkie.sample.max_new_tokens=6",
        "silkie.sample.batch_size=4", "silkie.sample.progress=false", "silkie.sample.num_threads=1"]
SCRIPTED_ONLY = ["silkie.sample.pool.base=null", "silkie.sample.pool.sft=null", "silkie.sample.pool.sft_step=null"]
THREE_THREADS = ["silkie.fanout.runner=thread", "silkie.fanout.shards=3", "silkie.fanout.workers=3"]
VARYING = ("wall_seconds", "mlflow_run_id", "fanout")  # everything else must match exactly


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def project(root: Path, models: bool) -> Path:
    cfg = compose(TINY, ROOT)
    make_test_world(root / cfg.paths.world, train_scenes=6, val_scenes=1, test_scenes=8)
    if models:
        base = make_test_model(root / cfg.paths.base_model)
        shutil.copytree(base, root / cfg.paths.sft / "model")
        for step in (1, 2):
            shutil.copytree(base, root / cfg.paths.sft / "checkpoints" / f"checkpoint-{step}")
    return root


def run(root: Path, stage: str, overrides: list[str]) -> dict:
    OmegaConf.save(compose([*TINY, *overrides], ROOT), root / "params.yaml")
    return run_stage(stage, root)


def same_counters(one: dict, many: dict) -> None:
    assert {k: v for k, v in one.items() if k not in VARYING} == {k: v for k, v in many.items() if k not in VARYING}


def test_sharded_sample_and_oracle_annotate_equal_one_process(prefect_server: None, mlflow_root: Path) -> None:
    root = project(mlflow_root, models=True)
    # the SFT model (sampling, temperature 0.7) and 3 scripted policies, each answering every instruction
    pool = [f"silkie.sample.pool.{name}=null" for name in ("base", "sft_step", "hallucinate", "miscount",
                                                           "wrong_color")]
    one = {stage: run(root, stage, [*pool, "paths.feedback=data/one"]) for stage in ("sample", "annotate")}
    many = {stage: run(root, stage, [*pool, "paths.feedback=data/many", *THREE_THREADS])
            for stage in ("sample", "annotate")}
    for name in ("samples.jsonl", "annotated.jsonl"):  # byte for byte, the model's sampled answers included
        assert (root / "data/many" / name).read_bytes() == (root / "data/one" / name).read_bytes(), name
    # 13-16 instructions: 4 batches of 4 per policy, in name order correct, sft, terse, verbose; 3 shards of
    # these 16 work items cut sft's batches between shards 0 and 1 (its seeds and batches must still match)
    assert set(one["sample"]["per_policy"]) == {"sft", "correct", "terse", "verbose"}
    assert 13 <= one["sample"]["per_policy"]["sft"] == one["sample"]["instructions"] <= 16
    for stage in ("sample", "annotate"):
        same_counters(one[stage], many[stage])
        assert one[stage]["fanout"]["runner"] == "none" and one[stage]["fanout"]["shards"] == 1
        assert many[stage]["fanout"]["runner"] == "thread" and many[stage]["fanout"]["shards"] == 3
    assert many["annotate"]["judge_records"] == many["annotate"]["records"] > 3


def rate(response: str, aspect: int) -> int:
    return (len(response) + 2 * aspect) % 5 + 1


def fake_judge(body: dict) -> str:
    """Rates the responses it finds in the annotation prompt, in the published reply format."""
    text = next(part["text"] for part in body["messages"][0]["content"] if part["type"] == "text")
    responses = re.findall(r"^- <text \d+> (.*)$", text.split("## Annotation", 1)[1], re.M)
    parts = []
    for a, aspect in enumerate(ASPECT_ORDER):
        parts.append(f"#### {aspect} Assessment")
        parts += [f"##### Output for Text {k}\nRating: {rate(r, a)}\nRationale: ok" for k, r in
                  enumerate(responses, start=1)]
    return "\n".join(parts)


def api_judge(server: FakeChatServer, cache: str) -> list[str]:
    return ["silkie/judge=api", f"silkie.judge.base_url={server.url}", "silkie.judge.model=judge-v",
            "silkie.judge.api_key_env=null", "silkie.judge.timeout_s=10", "silkie.judge.backoff_base_s=0.001",
            "silkie.judge.backoff_max_s=0.01", "silkie.judge.max_retries=12", "silkie.judge.concurrency=3",
            "silkie.judge.prices.prompt_per_1m=3.7", "silkie.judge.prices.completion_per_1m=11.3",
            f"silkie.judge.cache_dir={cache}", "silkie.judge.chunk_size=5"]


def faulty() -> FakeChatServer:
    # faults drawn per request body and attempt (not arrival order), so both runs meet the same ones; no "hang":
    # a timeout depends on the machine's load, not on the request
    return FakeChatServer(fake_judge, fault_rate=0.35, seed=11, fault_by_content=True,
                          fault_kinds=("500", "503", "429", "malformed", "no_choices"), retry_after=0.01)


def test_sharded_api_judge_equals_one_process_and_reruns_free(prefect_server: None, mlflow_root: Path) -> None:
    root = project(mlflow_root, models=False)
    run(root, "sample", SCRIPTED_ONLY)
    with faulty() as server:
        one = run(root, "annotate", [*SCRIPTED_ONLY, *api_judge(server, "data/cache_one"),
                                     "paths.feedback=data/feedback"])
    shutil.copyfile(root / "data/feedback/annotated.jsonl", root / "one.jsonl")
    with faulty() as server:
        overrides = [*SCRIPTED_ONLY, *api_judge(server, "data/cache_many"), *THREE_THREADS]
        many = run(root, "annotate", overrides)
        paid = server.calls
        assert (root / "data/feedback/annotated.jsonl").read_bytes() == (root / "one.jsonl").read_bytes()
        same_counters(one, many)
        records = many["records"]
        assert many["judge_calls"] == many["judge_cache_misses"] == records > 3
        assert many["judge_retries"] > 0 and many["judge_requests"] == records + many["judge_retries"] == paid
        assert many["judge_cost_usd"] == round((many["judge_prompt_tokens"] * 3.7
                                                + many["judge_completion_tokens"] * 11.3) / 1e6, 6)
        cache = AnnotationCache(root / "data/cache_many")  # three shards' writers, one file
        assert len(cache) == records and cache.torn_lines == 0

        again = run(root, "annotate", overrides)  # everything from the shared cache
        assert server.calls == paid and again["judge_cache_hits"] == records and "judge_requests" not in again
    assert json.loads((root / "metrics/annotate.json").read_text())["fanout"]["shards"] == 3


def slow_when_marked(piece: list[dict], *, marker: str) -> tuple[list[int], dict]:
    if any(item["id"] == marker for item in piece):
        for _ in range(200):  # 10 s of Python-level waiting: Prefect's timeout interrupts it between sleeps
            time.sleep(0.05)
    return [len(item["id"]) for item in piece], {"items": len(piece)}


def test_a_shard_over_its_timeout_fails_naming_its_records(prefect_server: None) -> None:
    records = [{"id": f"r{index}"} for index in range(9)]
    config = FanoutConfig(runner="thread", shards=3, timeout_s=1.0)
    fine = fan_out_shards(slow_when_marked, records, config, marker="none")
    assert [shard.results for shard in fine] == [[2, 2, 2]] * 3
    assert sum_metrics([shard.metrics for shard in fine]) == {"items": 9}
    started = time.monotonic()
    with pytest.raises(ShardTimeout, match=r"fanout shard 1 of 3 \(records 'r3' \.\. 'r5' \(3 records\)\).*"
                                           r"fanout.timeout_s=1 s on the thread runner"):
        fan_out_shards(slow_when_marked, records, config, marker="r4")
    assert time.monotonic() - started < 8  # stopped, not waited out


def test_fanout_config_and_metric_sums() -> None:
    with pytest.raises(ValueError, match="needs a Prefect runner"):
        FanoutConfig(timeout_s=5)
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        FanoutConfig(runner="thread", timeout_s=0)
    defaults = OmegaConf.to_container(compose([], ROOT).silkie.fanout)
    assert FanoutConfig.from_mapping(defaults) == FanoutConfig()  # the shipped default: one process
    assert sum_metrics([{"a": 1, "c_cost_usd": 0.1, "n": {"x": 2}}, {"a": 2, "c_cost_usd": 0.2, "n": {"x": 3},
                                                                      "b": 1}]) == \
        {"a": 3, "c_cost_usd": 0.3, "n": {"x": 5}, "b": 1}
    with pytest.raises(ValueError, match="disagree on 'judge'"):
        sum_metrics([{"judge": "api"}, {"judge": "oracle"}])


# Slow (12 s here, on top of the ~20 s Prefect server): each process-pool worker is a fresh interpreter that
# imports silkfire and torch.
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_process_runner_api_judge_shares_one_cache(prefect_server: None, mlflow_root: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", str(PREFECT_API_URL.value()))  # the workers report to the test server
    root = project(mlflow_root, models=False)
    run(root, "sample", SCRIPTED_ONLY)
    with faulty() as server:
        one = run(root, "annotate", [*SCRIPTED_ONLY, *api_judge(server, "data/cache_one")])
    expected = (root / "data/feedback/annotated.jsonl").read_bytes()
    processes = ["silkie.fanout.runner=process", "silkie.fanout.shards=2", "silkie.fanout.workers=2"]
    with faulty() as server:
        overrides = [*SCRIPTED_ONLY, *api_judge(server, "data/cache_many"), *processes]
        many = run(root, "annotate", overrides)
        assert (root / "data/feedback/annotated.jsonl").read_bytes() == expected
        same_counters(one, many)
        cache = AnnotationCache(root / "data/cache_many")  # two worker processes wrote it
        assert len(cache) == many["records"] and cache.torn_lines == 0
        paid = server.calls
        again = run(root, "annotate", overrides)
        assert server.calls == paid and again["judge_cache_hits"] == again["records"]
