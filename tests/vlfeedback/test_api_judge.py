"""The API judge against a real local server that fails ~30% of calls: every record annotated once, cached,
re-runs free, secrets kept out of everything it writes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from silkfire.vlfeedback.cache import AnnotationCache
from silkfire.vlfeedback.judges import ApiJudge, Judge, JudgeError, make_judge
from silkfire.vlfeedback.testing import check, fake_judge, world_records
from silkfire.images import UnsafeImage
from silkfire.llm.client import ClientConfig
from silkfire.llm.testing import FakeChatServer

SECRET = "sk-judge-SECRET-987654"


def make(server: FakeChatServer, cache: Path, **overrides: object) -> ApiJudge:
    values: dict = {"base_url": server.url, "model": "judge-v", "api_key_env": "SILKFIRE_JUDGE_KEY",
                    "timeout_s": 0.4, "backoff_base_s": 0.001, "backoff_max_s": 0.01, "max_retries": 12,
                    "concurrency": 6, "prompt_price_per_1m": 1.0, "completion_price_per_1m": 3.0}
    values.update(overrides)
    return ApiJudge(ClientConfig(**values), cache, chunk_size=16)


def test_faulty_server_every_record_annotated_once_then_free(
        small_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("SILKFIRE_JUDGE_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    records = world_records(small_world, 40)
    cache = tmp_path / "cache"
    with FakeChatServer(fake_judge, fault_rate=0.3, seed=7, hang_s=1.0, api_key=SECRET) as server:
        judge = make(server, cache)
        assert isinstance(judge, Judge)
        annotated = judge.annotate(records, image_root=small_world)
        first_calls = server.calls
        check(annotated, records)
        assert server.served == 40  # each record's judgement paid exactly once
        assert sum(server.faults.values()) >= 6 and len(server.faults) >= 4  # mixed faults happened
        metrics = judge.metrics()
        assert metrics["judge_calls"] == 40 and metrics["judge_retries"] == first_calls - 40
        assert metrics["judge_cache_misses"] == 40 and metrics["judge_na_ratings"] == 0
        assert metrics["judge_cost_usd"] == pytest.approx(
            (metrics["judge_prompt_tokens"] * 1.0 + metrics["judge_completion_tokens"] * 3.0) / 1e6)
        judge.close()
        assert len(AnnotationCache(cache)) == 40
        # a second run: everything from the cache, zero API calls (and no key needed)
        monkeypatch.delenv("SILKFIRE_JUDGE_KEY")
        again = make(server, cache)
        assert again.annotate(records, image_root=small_world) == annotated
        assert server.calls == first_calls and again.metrics()["judge_cache_hits"] == 40
        assert "judge_requests" not in again.metrics()
    written = (cache / "annotations.jsonl").read_text()
    for text in (written, caplog.text, str(judge.params()), str(metrics), repr(judge.client_config)):
        assert SECRET not in text


def test_resume_after_a_crash_pays_only_the_rest(small_world: Path, tmp_path: Path) -> None:
    records = world_records(small_world, 12)
    cache = tmp_path / "cache"
    with FakeChatServer(fake_judge) as server:
        make(server, cache, api_key_env=None).annotate(records[:5], image_root=small_world)
        with (cache / "annotations.jsonl").open("a") as handle:
            handle.write('{"key": "torn')  # a crash mid-write
        judge = make(server, cache, api_key_env=None)
        assert judge.cache.torn_lines == 1
        check(judge.annotate(records + records[:2], image_root=small_world), records + records[:2])
        assert server.served == 12 and judge.metrics()["judge_cache_hits"] == 5 + 2
    assert len(AnnotationCache(cache)) == 12


def test_failed_calls_raise_after_caching_or_become_na(small_world: Path, tmp_path: Path) -> None:
    records = world_records(small_world, 4)
    with FakeChatServer(fake_judge, script=[None, None] + ["500"] * 50) as server:
        judge = make(server, tmp_path / "c", api_key_env=None, max_retries=1, concurrency=1)
        with pytest.raises(JudgeError, match=r"2 record\(s\) not annotated"):
            judge.annotate(records, image_root=small_world)
        assert len(judge.cache) == 2
    with FakeChatServer(fake_judge, fault_rate=1.0, fault_kinds=["503"]) as server:
        judge = ApiJudge(ClientConfig(base_url=server.url, model="judge-v", api_key_env=None, max_retries=0),
                         tmp_path / "c", on_failure="na")
        out = judge.annotate(records, image_root=small_world)
    assert sum(1 for r in out for c in r["completions"] if c["annotations"]["Helpfulness"]["Rating"] == "N/A") == 8
    with pytest.raises(UnsafeImage, match="record 0.*img_path: file not found"):
        judge.annotate([dict(records[0], img_path="images/none.png")], image_root=small_world)


def test_make_judge_from_config_files(small_world: Path, tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from silkfire.config import project_root

    conf = project_root() / "conf" / "silkie" / "judge"
    oracle = make_judge(OmegaConf.load(conf / "oracle.yaml"), world_dir=small_world)
    assert oracle.name == "oracle" and oracle.params()["judge_verbose_words"] == 12
    api_cfg = OmegaConf.load(conf / "api.yaml")
    api_cfg.cache_dir = str(tmp_path / "cache")
    api_cfg.api_key_env = None
    api = make_judge(api_cfg, root=tmp_path)
    assert isinstance(api, ApiJudge) and api.client_config.concurrency == 8
    assert api.client_config.prompt_price_per_1m == 2.5
    template = tmp_path / "template.txt"
    template.write_text("Rate [[texts]] for [[instruction]].")
    api_cfg.template_file = str(template)
    custom = make_judge(api_cfg, root=tmp_path)
    assert custom.template_version.startswith("file-") and custom.template_version != api.template_version
    with pytest.raises(ValueError, match="unknown kind"):
        make_judge({"kind": "gpt"})
    with pytest.raises(ValueError, match="world"):
        make_judge({"kind": "oracle"})
