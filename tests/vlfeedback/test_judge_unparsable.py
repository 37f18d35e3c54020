"""Unparsable judge replies (HTTP 200 refusals, truncated texts) are not answers: never cached as such, asked again
on the next run (bounded, counted), and an old cache that holds them heals -- against the real local HTTP server."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from pathlib import Path

from silkfire.vlfeedback.cache import CACHE_FILE, UNPARSABLE_FILE, AnnotationCache, annotation_key, image_digest
from silkfire.vlfeedback.judges import ApiJudge, readable
from silkfire.vlfeedback.testing import check, fake_judge, world_records
from silkfire.llm.client import ClientConfig
from silkfire.llm.testing import FakeChatServer

REFUSAL = "I'm sorry, but I can't help with rating these responses."


def record_tag(body: dict) -> str:
    """Which record a request is about: its second response is 'wrong <index>' (see world_records)."""
    text = next(part["text"] for part in body["messages"][0]["content"] if part["type"] == "text")
    return re.search(r"^- <text 2> (wrong \d+)$", text, re.M).group(1)


class Refuser:
    """Refuses (HTTP 200, no ratings) the tagged records the first ``times`` times each is asked; a truncated
    reply (the last aspect missing) for the 'truncated' ones; the fake judge's answer otherwise."""

    def __init__(self, refuse: set[str], truncated: set[str] = frozenset(), times: int = 1) -> None:
        self.refuse, self.truncated, self.times = refuse, truncated, times
        self.asked: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, body: dict) -> str:
        tag = record_tag(body)
        with self._lock:
            self.asked[tag] += 1
            count = self.asked[tag]
        if count <= self.times and tag in self.refuse:
            return REFUSAL
        if count <= self.times and tag in self.truncated:
            return fake_judge(body).split("#### Visual Faithfulness")[0]
        return fake_judge(body)


def make(server: FakeChatServer, cache: Path, **kwargs: object) -> ApiJudge:
    config = ClientConfig(base_url=server.url, model="judge-v", api_key_env=None, timeout_s=2.0, max_retries=0,
                          concurrency=4)
    return ApiJudge(config, cache, chunk_size=8, **kwargs)


def ratings(annotated: list[dict]) -> list[str]:
    return [note["Rating"] for record in annotated for completion in record["completions"]
            for note in completion["annotations"].values()]


def test_refused_records_are_asked_again_next_run_and_end_with_no_na(small_world: Path, tmp_path: Path) -> None:
    records = world_records(small_world, 25)
    refused = {f"wrong {index}" for index in range(0, 25, 5)}  # 5 refusals (20%) ...
    truncated = {"wrong 3"}  # ... and one reply cut off before its last aspect
    cache = tmp_path / "cache"
    server_reply = Refuser(refused, truncated)
    with FakeChatServer(server_reply) as server:
        judge = make(server, cache)
        first = judge.annotate(records, image_root=small_world)
        metrics = judge.metrics()
        assert server.served == 25
        assert metrics["judge_unparsable"] == 6 and metrics["judge_na_ratings"] == 5 * 12 + 4
        assert metrics["judge_retried"] == 0 and metrics["judge_unparsable_given_up"] == 0
        assert ratings(first).count("N/A") == 64
        note = first[0]["completions"][0]["annotations"]["Helpfulness"]["Rationale"]
        assert "unparsable (attempt 1 of 3)" in note and "asked again on the next run" in note
        truncated_notes = first[3]["completions"][0]["annotations"]
        assert truncated_notes["Helpfulness"]["Rating"] != "N/A"  # what did parse is used this run
        assert truncated_notes["Visual Faithfulness"]["Rating"] == "N/A"
        # only answers in the cache; the refusals in the side record
        stored = AnnotationCache(cache)
        assert len(stored) == 19 and all(REFUSAL not in json.dumps(stored.get(k)) for k in stored._entries)
        assert len((cache / UNPARSABLE_FILE).read_text().splitlines()) == 6

        # the second run re-asks exactly the refused/truncated records, and ends with no N/A
        served = server.served
        before = Counter(server_reply.asked)
        again = make(server, cache)
        second = again.annotate(records, image_root=small_world)
        asked_now = server_reply.asked - before
        assert server.served - served == 6 and set(asked_now) == refused | truncated
        assert all(count == 1 for count in asked_now.values())
        check(second, records)
        metrics = again.metrics()
        assert metrics["judge_na_ratings"] == 0 and metrics["judge_unparsable"] == 0
        assert metrics["judge_retried"] == 6 and metrics["judge_cache_hits"] == 19

        # a third run is free
        third = make(server, cache)
        assert third.annotate(records, image_root=small_world) == second
        assert server.served - served == 6 and third.metrics()["judge_cache_hits"] == 25


def test_a_record_always_refused_is_asked_a_bounded_number_of_times(small_world: Path, tmp_path: Path) -> None:
    records = world_records(small_world, 6)
    cache = tmp_path / "cache"
    server_reply = Refuser({"wrong 2"}, times=10**6)
    with FakeChatServer(server_reply) as server:
        for run in range(1, 4):
            judge = make(server, cache)
            out = judge.annotate(records, image_root=small_world)
            assert judge.metrics()["judge_unparsable"] == 1 and judge.metrics()["judge_retried"] == (run > 1)
            assert server_reply.asked["wrong 2"] == run
            assert ratings(out).count("N/A") == 12
        served = server.served
        for _ in range(2):  # the bound (3) is reached: no more calls, still N/A, and it says why
            judge = make(server, cache)
            out = judge.annotate(records, image_root=small_world)
            assert server.served == served and server_reply.asked["wrong 2"] == 3
            metrics = judge.metrics()
            assert metrics["judge_unparsable_given_up"] == 1 and metrics["judge_cache_hits"] == 5
            assert metrics["judge_unparsable"] == 0 and metrics["judge_na_ratings"] == 12
            note = out[2]["completions"][1]["annotations"]["Ethical Considerations"]["Rationale"]
            assert "unparsable in 3 attempts" in note and "not asked again" in note
        # a higher bound (config) asks again
        judge = make(server, cache, max_unparsable_attempts=4)
        judge.annotate(records, image_root=small_world)
        assert server_reply.asked["wrong 2"] == 4 and judge.metrics()["judge_retried"] == 1


def test_an_old_cache_holding_refusals_heals(small_world: Path, tmp_path: Path) -> None:
    """A cache written before the rule (refusals stored as answers): those entries are not hits; the rest are."""
    records = world_records(small_world, 8)
    cache = tmp_path / "cache"
    old = AnnotationCache(cache)
    for index, record in enumerate(records):
        key = annotation_key("judge-v", "silkfire-vlfeedback-1", record["prompt"],
                             image_digest(small_world / record["img_path"]),
                             [c["response"] for c in record["completions"]])
        body = {"messages": [{"content": [{"type": "text", "text": "## Annotation\n" + "\n".join(
            f"- <text {k}> {c['response']}" for k, c in enumerate(record["completions"], start=1))}]}]}
        old.put({"key": key, "id": record["id"], "model": "judge-v", "text": REFUSAL if index in (1, 6)
                 else fake_judge(body)})
    with FakeChatServer(fake_judge) as server:
        judge = make(server, cache)
        check(judge.annotate(records, image_root=small_world), records)
        assert server.served == 2
        metrics = judge.metrics()
        assert metrics["judge_cache_hits"] == 6 and metrics["judge_retried"] == 2
        assert metrics["judge_na_ratings"] == 0
    assert not (cache / UNPARSABLE_FILE).exists()
    lines = (cache / CACHE_FILE).read_text().splitlines()
    assert len(lines) == 10  # append-only: the healed answers were appended, later lines win
    assert len(AnnotationCache(cache)) == 8


def test_readable() -> None:
    assert not readable(REFUSAL, 2) and not readable("", 1)
    reply = "\n".join(f"#### {a}\n##### Output for Text 1\nRating: 4\nRationale: ok"
                      for a in ("Helpfulness", "Ethical Considerations", "Visual Faithfulness"))
    assert readable(reply, 1) and not readable(reply, 2)


def test_mmhal_rater_refusals_are_not_cached_as_a_zero(tmp_path: Path) -> None:
    """The MMHal API rater shares the cache and the rule: an unreadable reply (the official parser's 0) is
    re-asked next run, bounded."""
    from silkfire.eval.mmhal import ApiMMHalRater

    items = [{"image_id": f"img{k}", "question": f"What is shape {k}?", "gt_answer": "A circle.",
              "image_content": ["circle"], "model_answer": f"A circle {k}."} for k in range(5)]
    asked: Counter[str] = Counter()

    def judge(body: dict) -> str:
        answer = body["messages"][0]["content"].split("LMM Response to Evaluate:")[-1].strip()
        asked[answer] += 1
        if answer == "A circle 1." and asked[answer] == 1:
            return REFUSAL  # once
        if answer == "A circle 3.":
            return "Rating: 4 or maybe Rating: 5"  # always ambiguous: two ratings
        return "Fine. Rating: 5"

    with FakeChatServer(judge) as server:
        config = ClientConfig(base_url=server.url, model="m", api_key_env=None, max_retries=0)
        runs = []
        for _ in range(4):
            rater = ApiMMHalRater(config, tmp_path / "cache")
            runs.append(([item["rating"] for item in rater.rate(items)], rater.metrics(), server.served))
    assert runs[0][0] == [5, 0, 5, 0, 5] and runs[0][1]["mmhal_judge_unparsable"] == 2
    assert runs[1][0] == [5, 5, 5, 0, 5] and runs[1][2] == 5 + 2  # both re-asked; item 1 heals
    assert runs[1][1]["mmhal_judge_retried"] == 2 and runs[1][1]["mmhal_judge_cache_hits"] == 3
    assert runs[2][2] == 8 and asked["A circle 3."] == 3  # the third and last attempt
    assert runs[3][2] == 8 and runs[3][1]["mmhal_judge_unparsable_given_up"] == 1 and runs[3][0][3] == 0
