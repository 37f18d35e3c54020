"""The bad-input corpus (tests/quality/corpus, listed in its README): every corruption is caught with its reason
(expectation, column, field, line, an example naming what is wrong); the good files, in the published layouts,
pass. Each file goes through its gate once per session (GX runs cost ~1 s each)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from silkfire.quality.cli import validate
from silkfire.quality.report import GateResult

IN_SET = "expect_column_values_to_be_in_set"
BETWEEN = "expect_column_values_to_be_between"
UNIQUE = "expect_column_values_to_be_unique"
GREATER = "expect_column_pair_values_a_to_be_greater_than_b"
REGEX = "expect_column_values_to_match_regex"


@dataclass(frozen=True)
class Case:
    kind: str
    column: str  # the (derived) column whose expectation must fail
    line: int  # a line of <kind>/bad.jsonl it must name
    example: str  # text the example value at that line must contain
    field: str  # the record field the report names
    expectation: str = IN_SET
    file: str = "bad.jsonl"


CASES: dict[str, Case] = {
    # VLFeedback
    "vlf_rating_na": Case("vlfeedback", "annotations__rating", 2, "Rating = 'N/A'", "completions"),
    "vlf_rating_6": Case("vlfeedback", "annotations__rating", 3, "['Visual Faithfulness'].Rating = '6'", "completions"),
    "vlf_rating_empty": Case("vlfeedback", "annotations__rating", 4, "Rating = ''", "completions"),
    "vlf_rating_int": Case("vlfeedback", "annotations__rating", 19, "Rating = 4:", "completions"),
    "vlf_three_completions": Case("vlfeedback", "completions__count", 5, "3", "completions", BETWEEN),
    "vlf_three_models": Case("vlfeedback", "models__status", 5, "3 names, expected 4", "models"),
    "vlf_missing_aspect": Case("vlfeedback", "annotations__aspects", 6, "lacks 'Ethical Considerations'",
                               "completions"),
    "vlf_blank_response": Case("vlfeedback", "completions__response", 7, "completions[2].response is blank",
                               "completions"),
    "vlf_duplicate_id": Case("vlfeedback", "id", 8, "vlf-1", "id", UNIQUE),
    "vlf_truncated_line": Case("vlfeedback", "__json__", 9, "not valid JSON", ""),
    "vlf_wrong_type": Case("vlfeedback", "prompt__type", 10, "int", "prompt"),
    "vlf_missing_key": Case("vlfeedback", "img_path__type", 11, "missing", "img_path"),
    "vlf_broken_png": Case("vlfeedback", "img_path__status", 12, "cannot decode image", "img_path"),
    "vlf_path_dotdot": Case("vlfeedback", "img_path__status", 13, "escapes the data root through '..'", "img_path"),
    "vlf_path_absolute": Case("vlfeedback", "img_path__status", 14, "absolute path", "img_path"),
    "vlf_symlink_out": Case("vlfeedback", "img_path__status", 15, "symlink points outside", "img_path"),
    "vlf_oversized_prompt": Case("vlfeedback", "prompt__tokens", 16, "80", "prompt", BETWEEN),
    "vlf_duplicate_image_prompt": Case("vlfeedback", "img_path+prompt__duplicate", 17, "duplicate of line(s) 1",
                                       "img_path,prompt"),
    "vlf_ragged_columns": Case("vlfeedback", "completions__status", 18, "lists of different lengths",
                               "completions"),
    # preference pairs
    "pairs_chosen_is_rejected": Case("pairs", "chosen__differs", 2, "chosen == rejected", "chosen"),
    "pairs_swapped_scores": Case("pairs", "chosen_score,rejected_score", 3, "(1.5, 3)",
                                 "chosen_score,rejected_score", GREATER),
    "pairs_score_string": Case("pairs", "chosen_score__type", 4, "str", "chosen_score"),
    "pairs_empty_rejected": Case("pairs", "rejected__type", 5, "blank", "rejected"),
    "pairs_no_image": Case("pairs", "image__given", 6, "neither 'image' nor 'img_path'", "image"),
    "pairs_duplicate": Case("pairs", "image+prompt+chosen+rejected__duplicate", 7, "duplicate of line(s) 1",
                            "image,prompt,chosen,rejected"),
    "pairs_score_bool": Case("pairs", "chosen_score__type", 8, "bool", "chosen_score"),
    "pairs_tie": Case("pairs", "chosen_score,rejected_score", 9, "(4.67, 4.67)", "chosen_score,rejected_score",
                      GREATER),
    "pairs_chosen_object": Case("pairs", "chosen__type", 10, "dict", "chosen"),
    # FIRE
    "fire_swapped_roles": Case("fire", "conversations__status", 2, "role 'teacher', expected 'student'",
                               "conversations"),
    "fire_round_mismatch": Case("fire", "round__turns", 3, "round 3 but 2 teacher turn(s)", "round"),
    "fire_score_out_of_range": Case("fire", "score__parsed", 4, "score 12 outside 0..10", "conversations"),
    "fire_no_score_line": Case("fire", "score__parsed", 5, "no integer on a 'Score:' line", "conversations"),
    "fire_ground_truth_leak": Case("fire", "feedback__leak", 6, "reveals the ground truth '7'", "conversations"),
    "fire_ends_with_student": Case("fire", "conversations__status", 7, "ends with a student turn", "conversations"),
    "fire_missing_groundtruth": Case("fire", "groundtruth__type", 8, "missing", "groundtruth"),
    "fire_blank_question": Case("fire", "question__status", 9, "question.value is blank", "question"),
    "fire_stored_scores_disagree": Case("fire", "score__agreement", 10, "score [0, 1] but the teacher turns say",
                                        "score"),
    "fire_wrong_turn_type": Case("fire", "conversations__status", 11, "type 'feedback', expected 'response'",
                                 "conversations"),
    "fire_conversations_not_list": Case("fire", "conversations__type", 12, "dict", "conversations"),
    "fire_round_string": Case("fire", "round__type", 13, "str", "round"),
    "fire_duplicate_dialogue": Case("fire", "image+question__duplicate", 14, "duplicate of line(s) 1",
                                    "image,question"),
    "fire_empty_teacher_turn": Case("fire", "conversations__status", 15, "turn 4 (teacher): empty text",
                                    "conversations"),
    # MME
    "mme_two_yes": Case("mme", "answer__pair", 4, "2 x Yes, 0 x No", "answer"),
    "mme_lowercase_answer": Case("mme", "answer", 5, "yes", "answer"),
    "mme_single_question": Case("mme", "question_id__rows", 7, "1", "question_id", BETWEEN),
    "mme_unknown_category": Case("mme", "category", 8, "celebrityy", "category"),
    "mme_no_suffix": Case("mme", "question", 10, "Is there a dog?", "question", REGEX),
    "mme_missing_image": Case("mme", "image__status", 13, "file not found", "image"),
    "mme_undecodable_line": Case("mme", "__json__", 2, "not valid UTF-8", "", file="undecodable.jsonl"),
    # MMHal-Bench
    "mmhal_type_order": Case("mmhal", "question_type__order", 3, "item 2 is 'counting', expected 'comparison'",
                             "question_type"),
    "mmhal_unknown_type": Case("mmhal", "question_type", 5, "relationship", "question_type"),
    "mmhal_content_string": Case("mmhal", "image_content__type", 6, "str", "image_content"),
    "mmhal_blank_answer": Case("mmhal", "gt_answer__type", 7, "blank", "gt_answer"),
    "mmhal_content_label": Case("mmhal", "image_content__status", 8, "non-string", "image_content"),
}
GOOD = {"vlfeedback": "good.jsonl", "pairs": "good.jsonl", "fire": "good.json", "mme": "good.jsonl",
        "mmhal": "good.json"}


@pytest.fixture(scope="session")
def run_corpus(corpus: Path, corpus_config: Any, tmp_path_factory: pytest.TempPathFactory):
    """``run_corpus(kind, file)`` -> the GateResult of that corpus file (cached for the session)."""
    cache: dict[tuple[str, str], GateResult] = {}
    reports = tmp_path_factory.mktemp("corpus_reports")

    def run(kind: str, name: str) -> GateResult:
        if (kind, name) not in cache:
            cache[kind, name] = validate(kind, corpus / kind / name, corpus_config, reports / kind / name, corpus)
        return cache[kind, name]

    return run


def test_corpus_has_twenty_kinds_of_corruption() -> None:
    assert len(CASES) >= 20 and {case.kind for case in CASES.values()} == set(GOOD)


@pytest.mark.parametrize("name", sorted(CASES))
def test_corruption_is_caught_with_its_reason(run_corpus, name: str) -> None:
    case = CASES[name]
    result = run_corpus(case.kind, case.file)
    assert not result.success
    matching = [f for _, f in result.failures if f.column == case.column and f.expectation == case.expectation]
    assert matching, f"{name}: no failed {case.expectation} on {case.column}; got " + ", ".join(
        f"{f.expectation}({f.column})" for _, f in result.failures)
    failure = matching[0]
    assert case.line in failure.lines, f"{name}: line {case.line} not in {failure.lines}"
    assert failure.field == case.field
    examples = dict(failure.examples)
    assert case.line in examples, f"{name}: no example at line {case.line}: {failure.examples}"
    assert case.example in str(examples[case.line]), f"{name}: {case.example!r} not in {examples[case.line]!r}"
    # the terminal report names file:line, the field and the value
    text = result.to_text(max_examples=10)
    assert f"{case.file}:{case.line}" in text


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_published_layouts_pass(run_corpus, kind: str) -> None:
    result = run_corpus(kind, GOOD[kind])
    assert result.success, result.to_text()
    assert result.summary()["rows_in"] == result.summary()["rows_out"] >= 3
    assert result.tables[0].line_label == ("record" if GOOD[kind].endswith(".json") else "line")


def test_fire_n_over_10_scores_read_right(run_corpus) -> None:
    bad = run_corpus("fire", "bad.jsonl")
    # line 16 writes "Score: 5/10." with score [5, 10]: parsed as 5, nothing to report
    assert all(16 not in failure.lines for _, failure in bad.failures)
    # the published sample layout (a JSON list with split, img_path, human_rating) with "Score: 5/10." passes
    assert run_corpus("fire", "good.json").success


def test_only_the_corrupted_lines_are_named(run_corpus) -> None:
    expected = {  # kind -> every line that must fail, and nothing else
        "vlfeedback": set(range(1, 20)),  # line 1 shares its id and its prompt with lines 8 and 17
        "pairs": set(range(1, 11)),  # line 1 is the duplicate of line 7
        "fire": set(range(1, 16)),  # line 1 is the duplicate of line 14; line 16 ("Score: 5/10.") is fine
        "mme": {3, 4, 5, 6, 7, 8, 9, 10, 13},
        "mmhal": {3, 4, 5, 6, 7, 8},
    }
    for kind, lines in expected.items():
        flagged = {line for _, f in run_corpus(kind, "bad.jsonl").failures for line in f.lines}
        assert flagged == lines, f"{kind}: flagged {sorted(flagged)}, expected {sorted(lines)}"


def test_truncated_json_list_is_a_failure_with_its_line(run_corpus) -> None:
    result = run_corpus("fire", "truncated.json")
    assert not result.success
    (failure,) = result.tables[0].failures
    assert failure.expectation == "file_is_readable" and "truncated.json:" in (failure.error or "")
    line = int(failure.error.split("truncated.json:")[1].split(":")[0])
    assert line > 1  # where the list breaks off, not a generic error
