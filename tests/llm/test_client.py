"""The chat client against a real local HTTP server: retries, Retry-After, accounting, concurrency, secrets."""

from __future__ import annotations

import base64
import logging
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from silkfire.images import check_image
from silkfire.llm.client import ApiError, ChatClient, ClientConfig, parse_retry_after, user_message
from silkfire.llm.testing import FakeChatServer


def config(server: FakeChatServer, **overrides: object) -> ClientConfig:
    values: dict = {"base_url": server.url, "model": "judge-1", "api_key_env": None, "timeout_s": 0.5,
                    "backoff_base_s": 0.001, "backoff_max_s": 0.01, "max_retries": 6}
    values.update(overrides)
    return ClientConfig(**values)


def test_reply_usage_cost_and_image_data_url(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4), "red").save(tmp_path / "x.png")
    image = check_image(tmp_path, "x.png")
    with pytest.raises(TypeError, match="check_image"):
        user_message("a bare path is refused", images=[tmp_path / "x.png"])  # type: ignore[list-item]
    with FakeChatServer("four words in reply") as server:
        cfg = config(server, prompt_price_per_1m=1000.0, completion_price_per_1m=2000.0)
        with ChatClient(cfg) as client:
            result = client.chat([user_message("two words", images=[image])])
        body = server.requests[0]
    assert result.text == "four words in reply" and result.attempts == 1
    assert (result.prompt_tokens, result.completion_tokens) == (2 + 85, 4)
    part = body["messages"][0]["content"][0]
    assert part["type"] == "image_url" and part["image_url"]["url"] == (
        "data:image/png;base64," + base64.b64encode((tmp_path / "x.png").read_bytes()).decode())
    assert body["model"] == "judge-1" and body["temperature"] == 0.0
    metrics = client.usage.metrics()
    assert metrics["llm_calls"] == 1 and metrics["llm_prompt_tokens"] == 87
    assert metrics["llm_cost_usd"] == pytest.approx((87 * 1000 + 4 * 2000) / 1e6)


def test_every_fault_kind_is_retried() -> None:
    script = ["500", "429", "malformed", "hang", "no_choices", "503"]
    with FakeChatServer("fine", script=script, hang_s=2.0) as server:
        with ChatClient(config(server, timeout_s=0.3)) as client:
            result = client.chat([user_message("q")])
    assert result.text == "fine" and result.attempts == 7
    assert client.usage.retries == 6 and client.usage.requests == 7 and client.usage.calls == 1
    assert server.calls == 7


def test_retry_after_is_honoured_and_retries_are_bounded() -> None:
    sleeps: list[float] = []
    with FakeChatServer("ok", script=["429"], retry_after=7) as server:
        with ChatClient(config(server), sleep=sleeps.append) as client:
            client.chat([user_message("q")])
    assert sleeps == [7.0]
    with FakeChatServer("ok", fault_rate=1.0, fault_kinds=["500"]) as server:
        with ChatClient(config(server, max_retries=2), sleep=sleeps.append) as client:
            with pytest.raises(ApiError, match="after 3 attempt") as info:
                client.chat([user_message("q")])
    assert info.value.status == 500 and server.calls == 3 and client.usage.failures == 1


def test_backoff_grows_exponentially_with_jitter() -> None:
    with FakeChatServer("ok") as server:
        with ChatClient(config(server, backoff_base_s=1.0, backoff_max_s=100.0)) as client:
            delays = [client._delay(attempt, None) for attempt in range(5)]
            assert all(2 ** a / 2 <= d <= 2 ** a for a, d in enumerate(delays))
            assert client._delay(10, None) <= 100.0
            assert client._delay(0, 30.0) == 30.0
    assert parse_retry_after("2.5") == 2.5 and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_client_errors_are_not_retried_and_key_never_leaks(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-test-SECRET-123456"
    monkeypatch.setenv("SILKFIRE_TEST_KEY", secret)
    caplog.set_level(logging.DEBUG)
    with FakeChatServer("ok", api_key="another-key") as server:
        cfg = config(server, api_key_env="SILKFIRE_TEST_KEY")
        with ChatClient(cfg) as client:
            with pytest.raises(ApiError) as info:
                client.chat([user_message("q")])
            assert info.value.status == 401 and server.calls == 0  # refused before any fault/reply
            texts = [str(info.value), repr(client), repr(cfg), str(cfg.params()), str(client.usage.metrics())]
    with FakeChatServer("ok", api_key=secret) as server:
        with ChatClient(config(server, api_key_env="SILKFIRE_TEST_KEY")) as client:
            assert client.chat([user_message("q")]).text == "ok"
    assert all(secret not in text for text in texts + [caplog.text])
    monkeypatch.delenv("SILKFIRE_TEST_KEY")
    with pytest.raises(ValueError, match="SILKFIRE_TEST_KEY"):
        ChatClient(cfg)


def test_chat_many_bounds_concurrency_and_reports_failures() -> None:
    active, peak = 0, 0
    lock = threading.Lock()

    def reply(body: dict) -> str:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.05)
        with lock:
            active -= 1
        return body["messages"][0]["content"].upper()

    requests = [[user_message(f"q{i}")] for i in range(12)]
    with FakeChatServer(reply) as server:
        with ChatClient(config(server, concurrency=3)) as client:
            results = dict(client.chat_many(requests))
    assert sorted(results) == list(range(12)) and results[5].text == "Q5"
    assert 2 <= peak <= 3
    with FakeChatServer("x", fault_rate=1.0, fault_kinds=["503"]) as server:
        with ChatClient(config(server, max_retries=1, concurrency=2)) as client:
            outcomes = dict(client.chat_many(requests[:3]))
    assert all(isinstance(outcome, ApiError) for outcome in outcomes.values())


def test_config_from_mapping() -> None:
    cfg = ClientConfig.from_mapping({"base_url": "http://h/v1", "model": "m", "api_key_env": None,
                                     "prices": {"prompt_per_1m": 2.5, "completion_per_1m": 10}})
    assert cfg.prompt_price_per_1m == 2.5 and cfg.api_key_env is None
    with pytest.raises(ValueError, match="unknown key"):
        ClientConfig.from_mapping({"base_url": "http://h", "model": "m", "api_key": "x"})
    with pytest.raises(ValueError, match="base_url"):
        ClientConfig(base_url="h", model="m")
