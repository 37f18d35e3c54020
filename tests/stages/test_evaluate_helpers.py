from silkfire.eval.mme import cap_pairs


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


def test_summary_shows_base_sft_and_blind() -> None:
    from silkfire.stages.evaluate import summary

    def scores(perception: float, cognition: float) -> dict:
        return {"perception": perception, "cognition": cognition, "subtasks": {}}

    metrics = {"mme": {"sft": scores(600.0, 300.0), "blind": scores(300.0, 150.0), "base": scores(0.0, 0.0)}}
    assert summary(metrics) == ("MME-style perception 0.0 -> 600.0 (blind 300.0), "
                                "cognition 0.0 -> 300.0 (blind 150.0)")
    assert summary({"mme": {"sft": scores(1.0, 2.0)}}) == "MME-style perception 1.0, cognition 2.0"
