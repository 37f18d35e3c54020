"""A FIRE teacher as a VLFeedback judge (issue 18): score mapping, annotation layout, agreement with the oracle."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from silkfire.vlfeedback.judges import make_judge
from silkfire.vlfeedback.oracle_judge import OracleJudge
from silkfire.vlfeedback.teacher_judge import TeacherJudge, agreement, score_to_rating, spearman
from silkfire.io import read_records


def test_fire_scores_map_onto_the_five_point_scale() -> None:
    assert [score_to_rating(n) for n in range(1, 11)] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert score_to_rating(0) == 1 and score_to_rating(12) == 5


def _records(world: Path, n: int = 6) -> list[dict[str, Any]]:
    """Open questions of the world's train scenes, each answered right, wrong and not at all."""
    records = []
    for question in [q for q in read_records(world / "train.jsonl") if q.get("family") == "open"][:n]:
        answer = str(question["answer"])
        records.append({"id": question["id"], "prompt": question["question"], "answer": answer,
                        "img_path": question["image"], "scene_id": question["scene_id"],
                        "family": "open", "category": question["category"],
                        "completions": [{"model": "right", "response": answer},
                                        {"model": "wrong", "response": "There are 7 purple hexagons."},
                                        {"model": "empty", "response": "I cannot tell."}]})
    return records


def test_the_world_fire_teacher_as_judge_rates_right_answers_above_wrong_ones(fire_world: Path) -> None:
    judge = make_judge({"kind": "fire_teacher", "teacher": {"kind": "oracle"}}, world_dir=fire_world, root=".")
    assert isinstance(judge, TeacherJudge)
    records = _records(fire_world)
    judged = judge.annotate(records, image_root=fire_world)
    assert [c.get("annotations") for r in records for c in r["completions"]] == [None] * 18  # inputs untouched
    for record in judged:
        notes = [c["annotations"] for c in record["completions"]]
        right, wrong, empty = (int(n["Helpfulness"]["Rating"]) for n in notes)
        assert right > wrong and right > empty, record["id"]
        assert all(n["Visual Faithfulness"]["Rating"] == "N/A" and n["Ethical Considerations"]["Rating"] == "N/A"
                   for n in notes)
        assert notes[0]["Helpfulness"]["Rationale"].startswith("Score ")
    assert judge.metrics()["judge_completions"] == 18 and judge.metrics()["judge_unparsable"] == 0

    oracle = OracleJudge.from_world(fire_world).annotate(records)
    measured = agreement(oracle, judged)
    # the oracle rates right 5 and wrong/empty 3.67 each (not a pair): 2 ordered pairs per record, all agreed
    assert measured["pairs"] == 12 and measured["pairwise_accuracy"] == 1.0
    assert measured["spearman"] == pytest.approx(1.0)


def test_the_trained_teacher_judge_counts_replies_without_a_score(fire_world: Path, fire_model: Path) -> None:
    judge = make_judge({"kind": "fire_teacher", "teacher": {"kind": "trained", "path": str(fire_model),
                                                            "max_new_tokens": 4, "batch_size": 4}},
                       world_dir=fire_world, root=".")
    judged = judge.annotate(_records(fire_world, n=2), image_root=fire_world)
    notes = [c["annotations"]["Helpfulness"] for r in judged for c in r["completions"]]
    unparsable = sum(note["Rating"] == "N/A" for note in notes)  # an untrained model rarely writes "Score: N"
    assert judge.metrics()["judge_unparsable"] == unparsable
    assert all(note["Rationale"].startswith("The teacher's reply has no score") for note in notes
               if note["Rating"] == "N/A")


def test_a_record_without_a_reference_answer_is_refused_by_id(fire_world: Path) -> None:
    judge = make_judge({"kind": "fire_teacher", "teacher": {"kind": "oracle"}}, world_dir=fire_world, root=".")
    record = {**_records(fire_world, n=1)[0], "id": "published-17"}
    del record["answer"]
    with pytest.raises(ValueError, match="record 0 .id 'published-17'. has no reference 'answer'"):
        judge.annotate([record])
    with pytest.raises(ValueError, match="unknown key"):
        make_judge({"kind": "fire_teacher", "teacher": {"kind": "oracle"}, "beta": 1}, world_dir=fire_world)
    with pytest.raises(ValueError, match="needs 'teacher'"):
        make_judge({"kind": "fire_teacher"}, world_dir=fire_world)


def _rated(*ratings: float | None) -> dict[str, Any]:
    return {"completions": [{"annotations": None if r is None else {"Helpfulness": {"Rating": str(r)}}}
                            for r in ratings]}


def test_agreement_counts_ordered_pairs_ties_and_rank_correlation() -> None:
    reference = [{"id": "a", **_rated(5, 3, 1)}, {"id": "b", **_rated(4, 4, 2)}]
    judged = [{"id": "a", **_rated(4, 4, 2)}, {"id": "b", **_rated(1, 2, 3)}]
    measured = agreement(reference, judged)
    # a: (5,3) judge tie -> 1/2, (5,1) agree, (3,1) agree; b: (4,4) not a pair, (4,2) and (4,2) both reversed
    assert measured["pairs"] == 5 and measured["pairwise_accuracy"] == pytest.approx(2.5 / 5)
    assert measured["judge_ties"] == pytest.approx(1 / 5) and measured["completions"] == 6
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))  # x ties: ranks 2.5
    assert math.isnan(spearman([1, 1], [1, 2]))
    # unrated completions drop out; mismatched records are refused
    assert agreement([{"id": "c", **_rated(5, None)}], [{"id": "c", **_rated(1, 2)}])["completions"] == 1
    with pytest.raises(ValueError, match="record 0 is 'a'"):
        agreement([{"id": "a", **_rated(1)}], [{"id": "z", **_rated(1)}])


def test_teacher_judged_records_pass_the_feedback_gate_the_judge_config_narrows(fire_world: Path,
                                                                              tmp_path: Path) -> None:
    """silkie/judge=fire_teacher rates Helpfulness only; choosing it narrows the vlfeedback gate to that aspect, so
    the annotate -> validate_feedback chain passes (with all three aspects the N/A ratings would fail it)."""
    from silkfire.config import compose
    from silkfire.io import write_jsonl
    from silkfire.quality import QualityConfig
    from silkfire.quality.cli import validate

    cfg = compose(["silkie/judge=fire_teacher"])
    assert cfg.silkie.judge.kind == "fire_teacher" and list(cfg.quality.vlfeedback.aspects) == ["Helpfulness"]
    records = _records(fire_world, n=3)
    for record in records:
        record["completions"].append({"model": "right_again", "response": record["answer"] + "."})
        record["models"] = [c["model"] for c in record["completions"]]
    judge = make_judge({"kind": "fire_teacher", "teacher": {"kind": "oracle"}}, world_dir=fire_world, root=".")
    path = tmp_path / "annotated.jsonl"
    write_jsonl(path, judge.annotate(records, image_root=fire_world))
    narrowed = validate("vlfeedback", path, QualityConfig.from_mapping(cfg.quality), tmp_path / "gate", fire_world)
    assert narrowed.success, narrowed.to_markdown()
    every_aspect = validate("vlfeedback", path, QualityConfig.from_mapping(compose([]).quality), tmp_path / "all",
                            fire_world)
    assert not every_aspect.success  # the default gate wants all three ratings
    # ... and the pairs stage's rule, over the aspects the config names, pairs them (over all three aspects the
    # "N/A" ratings made every completion unpairable: 0 pairs from 1410 at the default scale)
    from silkfire.vlfeedback.pair_rule import build_pairs
    from silkfire.vlfeedback.records import iter_feedback
    from silkfire.stages.pairs import rated_aspects

    pairs, counts = build_pairs(iter_feedback(path, require_annotations=True), 0.0, None, rated_aspects(cfg),
                                rule="silkie")
    assert pairs and counts["skipped"] == 0 and all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    _, everything = build_pairs(iter_feedback(path, require_annotations=True), 0.0, None, rule="silkie")
    assert everything["pairs"] == 0 and everything["skipped"] > 0


def test_the_judge_conf_narrows_the_gate_to_the_aspects_the_judge_rates() -> None:
    """agreement() and the pairs stage score the judge over the same aspects the judge's conf gives the gate."""
    from omegaconf import OmegaConf

    from silkfire.vlfeedback.teacher_judge import RATED_ASPECTS

    conf = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "silkie" / "judge" / "fire_teacher.yaml")
    assert tuple(conf.quality.vlfeedback.aspects) == RATED_ASPECTS
