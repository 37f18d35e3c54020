"""A fake VLFeedback judge for tests: deterministic ratings in the published reply format, world records to rate,
and the check that an annotation holds exactly those ratings (served by silkfire.llm.testing.FakeChatServer)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from silkfire.vlfeedback.template import ASPECT_ORDER
from silkfire.io import read_records


def expected(response: str, aspect: int) -> str:
    """The fake judge's deterministic rating of one response (1..5)."""
    return str((len(response) + 2 * aspect) % 5 + 1)


def published_reply(ratings: Sequence[Sequence[object]],
                    rationale: Callable[[str, int], str] = lambda aspect, k: f"ok {k}") -> str:
    """A judge reply in VLFeedback's published format: ``ratings[k - 1][a]`` is text k's rating on
    ``ASPECT_ORDER[a]``, ``rationale(aspect, k)`` its rationale."""
    parts = []
    for a, aspect in enumerate(ASPECT_ORDER):
        parts.append(f"#### {aspect} Assessment")
        for k, row in enumerate(ratings, start=1):
            parts.append(f"##### Output for Text {k}\nRating: {row[a]}\nRationale: {rationale(aspect, k)}")
    return "\n".join(parts)


def fake_judge(body: dict) -> str:
    """Reads the responses out of the annotation prompt and rates them in the published format."""
    text = next(part["text"] for part in body["messages"][0]["content"] if part["type"] == "text")
    annotation = text.split("## Annotation", 1)[1]
    responses = re.findall(r"^- <text \d+> (.*)$", annotation, re.M)
    return published_reply([[expected(response, a) for a in range(len(ASPECT_ORDER))] for response in responses])


def world_records(world: Path, n: int) -> list[dict]:
    records = []
    for index, item in enumerate(read_records(world / "train.jsonl")[:n]):
        responses = [item["answer"], f"wrong {index}", "Some shapes.", f"{item['answer']} Maybe {index % 7}."]
        records.append({"id": item["id"], "prompt": item["question"], "models": ["a", "b", "c", "d"],
                        "img_path": item["image"],
                        "completions": [{"model": m, "response": r, "annotations": None}
                                        for m, r in zip("abcd", responses)]})
    return records


def check(annotated: list[dict], records: list[dict]) -> None:
    assert [r["id"] for r in annotated] == [r["id"] for r in records]
    for record in annotated:
        for completion in record["completions"]:
            notes = completion["annotations"]
            assert list(notes) == list(ASPECT_ORDER)
            assert [notes[a]["Rating"] for a in ASPECT_ORDER] == [
                expected(completion["response"], i) for i in range(3)]
