"""MME scorer: official parser, acc / acc+ / score, group totals, file inputs, errors (hand-computed cases)."""

from __future__ import annotations

import json
import warnings

import pytest

from silkfire.eval.mme import (
    MME_CATEGORY_GROUPS,
    WORLD_CATEGORY_GROUPS,
    parse_yes_no,
    score_mme,
    score_mme_file,
)


def rec(qid: str, category: str, answer: str, prediction: str, question: str = "Q? Please answer yes or no.") -> dict:
    return {"question_id": qid, "category": category, "question": question, "answer": answer, "prediction": prediction}


@pytest.mark.parametrize(
    ("response", "label"),
    [
        ("yes", "yes"),
        ("No", "no"),
        ("YES", "yes"),
        ("Yes, there is", "yes"),
        ("The answer is yes", "other"),  # prefix "the " holds neither
        ("no.", "no"),
        ("Nope", "no"),  # "nope"[:4] holds "no"
        ("  yes", "other"),  # official tool does not strip: prefix "  ye"
        (" no", "no"),  # " no"[:4] still holds "no"
        ("yes\n", "yes"),  # the official tool reads lines with their newline: harmless
        ("Not sure", "no"),
        ("unknown", "other"),
        ("", "other"),
        ("maybe yes", "other"),
    ],
)
def test_parser_follows_the_official_four_character_rule(response: str, label: str) -> None:
    assert parse_yes_no(response) == label


def test_acc_plus_counts_images_with_both_questions_right() -> None:
    records = [
        rec("existence/a", "existence", "Yes", "Yes"),
        rec("existence/a", "existence", "No", "No"),
        rec("existence/b", "existence", "Yes", "Yes"),
        rec("existence/b", "existence", "No", "Yes"),
    ]
    result = score_mme(records)
    sub = result["subtasks"]["existence"]
    assert sub["acc"] == pytest.approx(0.75)
    assert sub["acc_plus"] == pytest.approx(0.5)
    assert sub["score"] == pytest.approx(125.0)
    assert result["perception"] == pytest.approx(125.0)
    assert result["cognition"] == 0.0
    assert set(result) == {"perception", "cognition", "subtasks"}
    assert set(sub) == {"acc", "acc_plus", "score"}


def test_other_answers_are_wrong_and_totals_sum_per_group() -> None:
    records = [
        # count: 4/4 right -> 200
        rec("count/a", "count", "Yes", "yes"),
        rec("count/a", "count", "No", "no"),
        rec("count/b", "count", "Yes", "Yes, two."),
        rec("count/b", "count", "No", "Nope"),
        # color: 1/2 right, the other "other" -> acc .5, acc+ 0 -> 50
        rec("color/a", "color", "Yes", "The answer is yes"),
        rec("color/a", "color", "No", "no"),
        # numerical_calculation: 2/2 -> 200 ; comparison: 0/2 -> 0
        rec("numerical_calculation/a", "numerical_calculation", "Yes", "yes"),
        rec("numerical_calculation/a", "numerical_calculation", "No", "no"),
        rec("comparison/a", "comparison", "Yes", "no"),
        rec("comparison/a", "comparison", "No", "yes"),
    ]
    result = score_mme(records)
    assert result["subtasks"]["count"]["score"] == pytest.approx(200.0)
    assert result["subtasks"]["color"] == pytest.approx({"acc": 0.5, "acc_plus": 0.0, "score": 50.0})
    assert result["subtasks"]["comparison"]["score"] == 0.0
    assert result["perception"] == pytest.approx(250.0)
    assert result["cognition"] == pytest.approx(200.0)
    # subtasks follow the group order, not the record order
    assert list(result["subtasks"]) == ["count", "color", "numerical_calculation", "comparison"]


def test_ground_truth_is_compared_lowercased() -> None:
    result = score_mme([rec("x/1", "OCR", "yes", "Yes"), rec("x/1", "OCR", "NO", "no")])
    assert result["subtasks"]["OCR"]["score"] == pytest.approx(200.0)


def test_groups_cover_official_mme_and_the_world() -> None:
    assert len(MME_CATEGORY_GROUPS) == 14
    assert sum(group == "perception" for group in MME_CATEGORY_GROUPS.values()) == 10
    assert WORLD_CATEGORY_GROUPS["comparison"] == "cognition"
    from silkfire.world.questions import CATEGORY_GROUPS

    for category, group in CATEGORY_GROUPS.items():
        assert WORLD_CATEGORY_GROUPS[category] == group


def test_official_groups_refuse_the_world_category() -> None:
    with pytest.raises(ValueError, match="unknown category 'comparison'.*extra_groups"):
        score_mme([rec("comparison/a", "comparison", "Yes", "yes")], MME_CATEGORY_GROUPS)


def test_jsonl_and_json_list_inputs_score_the_same(tmp_path) -> None:
    records = [
        rec("position/a", "position", "Yes", "Yes"),
        rec("position/a", "position", "No", "Yes"),
        rec("mine/a", "mine", "Yes", "yes"),
        rec("mine/a", "mine", "No", "no"),
    ]
    jsonl = tmp_path / "preds.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    listed = tmp_path / "preds.json"
    listed.write_text(json.dumps(records, indent=2), encoding="utf-8")
    a = score_mme_file(jsonl, extra_groups={"mine": "cognition"})
    b = score_mme_file(listed, extra_groups={"mine": "cognition"})
    assert a == b
    assert a["perception"] == pytest.approx(50.0)
    assert a["cognition"] == pytest.approx(200.0)


def test_unknown_category_in_a_file_names_file_and_fix(tmp_path) -> None:
    path = tmp_path / "preds.jsonl"
    path.write_text(json.dumps(rec("mine/a", "mine", "Yes", "yes")) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"preds\.jsonl.*record 0.*'mine/a'.*'category'.*extra_groups"):
        score_mme_file(path)


@pytest.mark.parametrize(
    ("broken", "pattern"),
    [
        ({"prediction": None}, r"record 1 \(question_id 'count/a'\): missing field 'prediction'"),
        ({"answer": "Maybe"}, r"record 1 \(question_id 'count/a'\): field 'answer' must be 'Yes' or 'No'"),
        ({"answer": " Yes"}, r"field 'answer'"),
        ({"prediction": 1}, r"field 'prediction' must be a string"),
    ],
)
def test_bad_records_are_named(broken: dict, pattern: str) -> None:
    good = rec("count/a", "count", "Yes", "yes")
    bad = {**rec("count/a", "count", "No", "no"), **broken}
    with pytest.raises(ValueError, match=pattern):
        score_mme([good, bad])


def test_missing_question_id_is_named() -> None:
    record = rec("count/a", "count", "Yes", "yes")
    del record["question_id"]
    with pytest.raises(ValueError, match=r"record 0 .*missing field 'question_id'"):
        score_mme([record])


def test_bad_group_name_is_refused() -> None:
    with pytest.raises(ValueError, match="perception' or 'cognition"):
        score_mme([], {"count": "vision"})


def test_unpaired_question_ids_are_scored_with_a_warning() -> None:
    records = [
        rec("count/a", "count", "Yes", "yes"),
        rec("count/a", "count", "No", "no"),
        rec("count/a", "count", "No", "no"),  # 3 questions, all right -> acc+ counts it
        rec("count/b", "count", "Yes", "no"),  # 1 question, wrong
    ]
    with pytest.warns(UserWarning, match=r"2 question_id\(s\).*count:count/a \(3\).*count:count/b \(1\)"):
        result = score_mme(records)
    assert result["subtasks"]["count"]["acc"] == pytest.approx(0.75)
    assert result["subtasks"]["count"]["acc_plus"] == pytest.approx(0.5)


def test_pairs_raise_no_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        score_mme([rec("count/a", "count", "Yes", "yes"), rec("count/a", "count", "No", "yes")])
