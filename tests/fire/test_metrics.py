"""FIRE-Bench metrics against hand-computed values (docs/fire_bench.md has the same worked example)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from silkfire.cli import main
from silkfire.fire.metrics import (
    FREE_KEYS,
    caption_scores,
    fixed_dialogue_items,
    fixed_dialogue_metrics,
    free_dialogue_metrics,
    free_dialogue_table,
    java_available,
    normalise_at,
    score_mae,
    tokenize,
)
from silkfire.fire.records import read_dialogues

SAMPLE = Path(__file__).parent / "data" / "fire_sample.json"

# n_i, first, last, gain, per-turn gain, wrong first (T=8), correct at the end
#   [5, 8, 10]   3   5  10   5   2.5   yes  yes
#   [10]         1  10  10   0   -     no   -
#   [3, 3]       2   3   3   0   0     yes  no
#   [None, 9]    2   0   9   9   9     yes  yes   (unparsable = 0)
#   [6, 4]       2   6   4  -2  -2     yes  no
WORKED = [[5, 8, 10], [10], [3, 3], [None, 9], [6, 4]]


def test_free_dialogue_worked_example() -> None:
    m = free_dialogue_metrics(WORKED)
    assert m["AT"] == pytest.approx(10 / 5)
    assert m["ADR"] == pytest.approx((5 + 0 + 0 + 9 - 2) / 5)
    assert m["ATR"] == pytest.approx((2.5 + 0 + 9 - 2) / 4)
    assert m["RR"] == pytest.approx(2 / 4)
    assert (m["dialogues"], m["wrong_first"], m["refined"], m["atr_dialogues"], m["unparsable"]) == (5, 4, 2, 4, 1)


def test_threshold_moves_only_rr() -> None:
    base, strict = free_dialogue_metrics(WORKED), free_dialogue_metrics(WORKED, threshold=10)
    assert strict["RR"] == pytest.approx(1 / 4)  # only [5, 8, 10] reaches 10; [10] is not wrong at turn 1
    assert all(strict[key] == base[key] for key in ("AT", "ADR", "ATR"))


def test_edge_cases() -> None:
    single = free_dialogue_metrics([[9], [4], [None]])  # every n_i = 1
    assert (single["AT"], single["ADR"], single["ATR"], single["atr_dialogues"]) == (1.0, 0.0, 0.0, 0)
    assert single["RR"] == 0.0 and single["wrong_first"] == 2 and single["unparsable"] == 1
    solved = free_dialogue_metrics([[8], [10], [9, 10]])  # no wrong first turn: RR defined as 0 with wrong_first 0
    assert (solved["RR"], solved["wrong_first"]) == (0.0, 0)
    assert solved["ATR"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no dialogues"):
        free_dialogue_metrics([])
    with pytest.raises(ValueError, match="dialogue 1: no teacher turn"):
        free_dialogue_metrics([[3], []])


def test_three_tiny_dialogues_by_hand() -> None:
    # Definitions (FIRE-Bench free dialogue): s_i^t = teacher score of dialogue i at turn t, n_i its turns,
    # correct = score >= T (T = 8).
    #   AT  = mean n_i
    #   ADR = mean (s_i^{n_i} - s_i^1)
    #   ATR = mean over dialogues with n_i > 1 of (s_i^{n_i} - s_i^1) / (n_i - 1)
    #   RR  = #(wrong at turn 1 and correct at the end) / #(wrong at turn 1)
    # dialogue   n_i  first  last  gain  gain/(n_i-1)  wrong first  correct at end
    # [4, 6, 9]   3     4      9     5      2.5           yes           yes
    # [9]         1     9      9     0      -             no            -
    # [2, 5]      2     2      5     3      3             yes           no
    # AT = (3 + 1 + 2) / 3 = 2;  ADR = (5 + 0 + 3) / 3 = 8/3;  ATR = (2.5 + 3) / 2 = 2.75;  RR = 1 / 2.
    # Dialogues stop once correct, so RR also equals (acc_last - acc_1) / (1 - acc_1) = (2/3 - 1/3) / (2/3) = 1/2.
    m = free_dialogue_metrics([[4, 6, 9], [9], [2, 5]])
    assert m["AT"] == pytest.approx(2.0)
    assert m["ADR"] == pytest.approx(8 / 3)
    assert m["ATR"] == pytest.approx(2.75)
    assert m["RR"] == pytest.approx(0.5)
    assert (m["dialogues"], m["wrong_first"], m["refined"], m["atr_dialogues"], m["unparsable"]) == (3, 2, 1, 2, 0)


def test_at_normalised_to_a_baseline() -> None:
    assert normalise_at(2.1, 2.5) == pytest.approx(0.84)
    table = free_dialogue_table({"base": {"AT": 2.5}, "fire": {"AT": 2.1}}, baseline="base")
    assert (table["base"]["AT_norm"], table["fire"]["AT_norm"]) == (1.0, pytest.approx(0.84))
    with pytest.raises(ValueError, match="baseline 'x'"):
        free_dialogue_table({"base": {"AT": 1}}, "x")
    with pytest.raises(ValueError):
        normalise_at(1.0, 0.0)


def test_sample_file_uses_reparsed_scores() -> None:
    dialogues, _ = read_dialogues(SAMPLE)  # [5, 8, 10], [5, 10] (stored wrongly as [0, 1]), [2, 6, 10]
    m = free_dialogue_metrics(dialogues)
    assert m["AT"] == pytest.approx(8 / 3) and m["ADR"] == pytest.approx((5 + 5 + 8) / 3)
    assert m["ATR"] == pytest.approx((2.5 + 5 + 4) / 3) and m["RR"] == 1.0


def test_cli_prints_the_free_dialogue_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", "fire", str(SAMPLE), "--threshold", "9"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == set(FREE_KEYS) and out["dialogues"] == 3 and out["RR"] == 1.0
    assert main(["score", "fire", str(SAMPLE), "--baseline", str(SAMPLE)]) == 0
    assert json.loads(capsys.readouterr().out)["AT_norm"] == 1.0
    bad = tmp_path / "bad.jsonl"
    record = json.loads(SAMPLE.read_text())[0]
    record["round"] = 2
    bad.write_text(json.dumps(record) + "\n")
    assert main(["score", "fire", str(bad)]) == 2
    assert "bad.jsonl: record 1: field 'round' is 2" in capsys.readouterr().err


# ---- fixed dialogue -----------------------------------------------------------------------------------------------
def test_bleu_by_hand() -> None:
    # unigrams 3/4, bigrams 2/3, trigrams 1/2, 4-grams 0/1; equal lengths -> no brevity penalty
    scores = caption_scores(["a b c d"], ["a b c e"], tokenizer="regex")
    assert scores["BLEU-1"] == pytest.approx(0.75, abs=1e-6)
    assert scores["BLEU-2"] == pytest.approx((0.75 * 2 / 3) ** 0.5, abs=1e-6)
    assert scores["BLEU-3"] == pytest.approx((0.75 * 2 / 3 * 0.5) ** (1 / 3), abs=1e-6)
    assert scores["BLEU-4"] == pytest.approx(0.0, abs=1e-3)
    assert (scores["items"], scores["tokenizer"]) == (1, "regex")


def test_cider_of_perfect_distinct_pairs_is_ten() -> None:
    # identical texts, no n-gram shared across the corpus: every n-gram has idf log 2, cosine 1, no length
    # penalty -> each of n = 1..4 gives 1, CIDEr-D = 10 * mean = 10 (texts need >= 4 tokens for the 4-grams)
    texts = ["a red circle on top", "the blue square sits below"]
    scores = caption_scores(texts, texts, tokenizer="regex")
    assert scores["CIDEr"] == pytest.approx(10.0) and scores["BLEU-4"] == pytest.approx(1.0)
    worse = caption_scores(["a red circle on top", "the green square sits below"], texts, tokenizer="regex")
    assert worse["CIDEr"] < 10.0 and worse["BLEU-1"] < 1.0
    with pytest.raises(ValueError, match="1 generated texts but 2 references"):
        caption_scores(["x"], texts)


def test_regex_tokenizer_follows_ptb_conventions() -> None:
    texts, used = tokenize(["Thought: It isn't red; there's a well-known car (the 3rd one), e.g. 41.2% -- ok...",
                            "Score: 5/10.\nFeedback: \"Look\" again!"], tokenizer="regex")
    assert used == "regex"
    assert texts == ["thought it is n't red there 's a well-known car -lrb- the 3rd one -rrb- e.g. 41.2 % ok",
                     "score 5/10 feedback look again"]


@pytest.mark.skipif(not java_available(), reason="the PTB tokenizer needs java")
def test_ptb_and_regex_tokenizers_agree_on_dialogue_text() -> None:
    dialogues, _ = read_dialogues(SAMPLE)
    texts = [turn.value for dialogue in dialogues for turn in dialogue.turns] + [""]
    ptb, used = tokenize(texts, tokenizer="ptb")
    assert used == "ptb" and ptb == tokenize(texts, tokenizer="regex")[0]


def test_score_mae_charges_ten_for_unparsable() -> None:
    result = score_mae(["Score: 7.", "Score: 5/10.", "no score", "Score: 3."],
                       ["Score: 8.", "Score: 5.", "Score: 9.", "no reference score"])
    assert result == {"MAE": pytest.approx((1 + 0 + 10) / 3), "items": 3, "unparsable": 1, "skipped": 1}
    assert score_mae([], [])["MAE"] == 0.0


def test_fixed_dialogue_items_and_scores() -> None:
    dialogues, _ = read_dialogues(SAMPLE)
    refined = fixed_dialogue_items(dialogues, "student")
    assert len(refined) == 2 + 1 + 2  # student turns after a feedback: 3-round, 2-round, 3-round dialogues
    first = refined[0]
    assert (first.dialogue, first.turn) == (0, 2)
    assert first.responses == (dialogues[0].responses[0],) and first.feedbacks == (dialogues[0].feedbacks[0],)
    assert first.reference == dialogues[0].responses[1]
    assert len(fixed_dialogue_items(dialogues, "student", include_first=True)) == 8
    teacher = fixed_dialogue_items(dialogues, "teacher")
    assert len(teacher) == 8 and teacher[0].responses == (dialogues[0].responses[0],) and teacher[0].feedbacks == ()
    perfect = fixed_dialogue_metrics([item.reference for item in teacher], teacher, tokenizer="regex")
    assert perfect["BLEU-1"] == pytest.approx(1.0) and perfect["MAE"] == 0.0 and perfect["unparsable"] == 0
    shifted = fixed_dialogue_metrics([item.reference.replace("Score: 10", "Score: 7") for item in teacher], teacher,
                                     tokenizer="regex")
    assert shifted["MAE"] == pytest.approx(3 * 3 / 8)  # three turns scored 10 (one as 10/10) now say 7
    students = fixed_dialogue_metrics([item.reference for item in refined], refined, tokenizer="regex")
    assert "MAE" not in students
    with pytest.raises(ValueError, match="mix roles"):
        fixed_dialogue_metrics(["a"] * 2, [refined[0], teacher[0]])
