from silkfire.stages.evaluate import cap_pairs


def _pair(qid: str) -> list[dict[str, str]]:
    return [{"question_id": qid, "answer": "Yes"}, {"question_id": qid, "answer": "No"}]


def test_cap_pairs_never_splits_an_image() -> None:
    records = _pair("a") + _pair("b") + _pair("c")
    capped = cap_pairs(records, 3)
    assert [r["question_id"] for r in capped] == ["a", "a", "b", "b"]


def test_cap_pairs_without_cap_keeps_everything() -> None:
    records = _pair("a") + _pair("b")
    assert cap_pairs(records, None) == records
    assert cap_pairs(records, 10) == records
