"""Oracle judge on the scripted policy pool: records pass the vlfeedback gate, pairs pass the pairs gate, and
the judge ranks the correct profile above every failing one (the signal DPO learns from)."""

from __future__ import annotations

from pathlib import Path

from silkfire.vlfeedback.judges import make_judge
from silkfire.vlfeedback.pair_rule import build_pairs, completion_score
from silkfire.vlfeedback.records import read_feedback, write_feedback
from silkfire.io import write_jsonl
from silkfire.quality.config import QualityConfig


def test_oracle_records_and_pairs_pass_the_gates(small_world: Path, tmp_path: Path) -> None:
    from silkfire.policies.instructions import world_instructions
    from silkfire.policies.scripted import PROFILES, ScriptedPolicy
    from silkfire.quality.pairs import validate_pairs
    from silkfire.quality.vlfeedback import validate_vlfeedback

    judge = make_judge({"kind": "oracle"}, world_dir=small_world)
    instructions = world_instructions(small_world, max_instructions=200)
    policies = [ScriptedPolicy(profile, judge.config) for profile in PROFILES]  # type: ignore[attr-defined]
    records = []
    for index, instruction in enumerate(instructions):
        chosen = [policies[(index + k) % len(policies)] for k in range(4)]  # 4 of 6, rotating
        records.append({"id": instruction.id, "prompt": instruction.prompt, "models": [p.name for p in chosen],
                        "img_path": instruction.image,
                        "completions": [{"model": p.name, "response": p.answer(instruction, 0), "annotations": None}
                                        for p in chosen]})
    annotated = judge.annotate(records)
    path = tmp_path / "annotated.jsonl"
    write_feedback(path, annotated)
    gate = validate_vlfeedback(path, QualityConfig.from_mapping({}), tmp_path / "r1", image_root=small_world)
    assert gate.success, str(gate)

    feedback = read_feedback(path, require_annotations=True)
    strict_pairs, strict = build_pairs(feedback, rule="strict")
    assert strict["records"] == len(records) and strict["skipped"] == 0
    assert strict["pairs"] + strict["ties"] + strict["duplicates"] == 6 * len(records)
    assert strict["duplicates"] > 0  # scripted profiles often give the same short answer
    pairs, counts = build_pairs(feedback)  # the default: vlf-silkie's rule keeps those repeated texts
    assert counts["pairs"] + counts["ties"] == 6 * len(records) and counts["pairs"] > strict["pairs"]
    for name, rule, built in (("silkie", "silkie", pairs), ("strict", "strict", strict_pairs)):
        write_jsonl(tmp_path / f"pairs_{name}.jsonl", built)
        gate = validate_pairs(tmp_path / f"pairs_{name}.jsonl", QualityConfig.from_mapping({"pairs": {"rule": rule}}),
                              tmp_path / f"r_{name}", image_root=small_world)
        assert gate.success, str(gate)

    means: dict[str, list[float]] = {}
    for record in annotated:
        for completion in record["completions"]:
            means.setdefault(completion["model"], []).append(completion_score(completion["annotations"]))
    mean = {model: sum(values) / len(values) for model, values in means.items()}
    assert mean["correct"] == 5.0
    assert all(mean[model] < 5.0 for model in PROFILES if model != "correct"), mean
    won = [p for p in pairs if "correct" in (p["chosen_model"], p["rejected_model"])]
    assert won and all(p["chosen_model"] == "correct" for p in won)
