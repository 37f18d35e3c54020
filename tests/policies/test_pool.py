"""The policy pool: scripted failure profiles (checked by the oracle judge), seeded draws, HF sampling, API policy."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from silkfire.models.testing import make_test_model, make_test_world
from silkfire.policies.base import Instruction, PolicyError
from silkfire.policies.instructions import feedback_instructions, world_instructions
from silkfire.policies.pool import SamplingDefaults, build_pool, draw_policies, sample_responses
from silkfire.policies.scripted import PROFILES, ScriptedPolicy
from silkfire.world.config import WorldConfig

SCRIPTED = {name: {"kind": "scripted"} for name in PROFILES}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_world(tmp_path_factory.mktemp("world"), train_scenes=8, val_scenes=1, test_scenes=1)


@pytest.fixture(scope="module")
def instructions(world: Path) -> list[Instruction]:
    return world_instructions(world, families=["open", "probe", "mme"])


def _answers(profile: str, instructions: list[Instruction]) -> list[str]:
    return ScriptedPolicy(profile, WorldConfig()).respond(instructions, Path("."), seed=0)


def test_world_instructions_carry_scene_and_truth(world: Path, instructions: list[Instruction]) -> None:
    families = Counter(instruction.family for instruction in instructions)
    assert set(families) == {"open", "probe", "mme"}
    assert all(i.scene is not None and i.scene.scene_id in i.id for i in instructions)
    capped = world_instructions(world, max_instructions=10, family_weights={"open": 1, "probe": 1}, seed=3)
    assert len(capped) == 10 and {i.family for i in capped} <= {"open", "probe"}
    assert [i.id for i in capped] == [i.id for i in world_instructions(world, max_instructions=10,
                                                                       family_weights={"open": 1, "probe": 1}, seed=3)]


def test_scripted_profiles_fail_where_they_should(instructions: list[Instruction]) -> None:
    correct = _answers("correct", instructions)
    assert correct == [i.answer for i in instructions]
    by_kind = lambda family, category: [k for k, i in enumerate(instructions)  # noqa: E731
                                        if i.family == family and i.category == category]
    hallucinate, miscount, wrong_color = (_answers(p, instructions) for p in ("hallucinate", "miscount", "wrong_color"))
    probes = [k for k, i in enumerate(instructions) if i.family == "probe"]
    assert probes and all(not hallucinate[k].startswith("There is no") for k in probes)
    assert all(hallucinate[k] == "Yes" for k in by_kind("mme", "existence"))
    assert all(miscount[k] != correct[k] for k in by_kind("open", "count") + by_kind("mme", "count"))
    assert all(wrong_color[k] != correct[k] for k in by_kind("open", "color"))
    describe = by_kind("open", "describe")
    assert all(len(hallucinate[k]) > len(correct[k]) for k in describe)  # an invented object
    assert all(_answers("terse", instructions)[k] == "Some shapes." for k in describe)
    verbose = _answers("verbose", instructions)
    assert all(verbose[k].startswith(correct[k].rstrip(".")) and len(verbose[k]) > len(correct[k])
               for k in range(len(instructions)))
    # deterministic per seed
    assert hallucinate == _answers("hallucinate", instructions)


def test_the_oracle_judge_ranks_correct_above_every_failure_profile(world: Path,
                                                                    instructions: list[Instruction]) -> None:
    """The profiles are only useful if a judge can tell them apart: mean score per profile under the oracle."""
    from silkfire.vlfeedback.judges import make_judge
    from silkfire.vlfeedback.pair_rule import completion_score

    pool = build_pool(SCRIPTED, world, SamplingDefaults(progress=False), WorldConfig())
    records, stats = sample_responses(instructions, pool, world, k=6, seed=0, progress=False)
    assert all(sorted(r["models"]) == sorted(PROFILES) for r in records)
    annotated = make_judge({"kind": "oracle"}, world_dir=world).annotate(records, image_root=world)
    scores: dict[str, list[float]] = {}
    for record in annotated:
        for completion in record["completions"]:
            scores.setdefault(completion["model"], []).append(completion_score(completion["annotations"]))
    mean = {name: sum(values) / len(values) for name, values in scores.items()}
    assert all(mean["correct"] > mean[name] for name in ("hallucinate", "miscount", "wrong_color", "terse")), mean


def test_mmhal_family_asks_the_benchmark_kinds_of_training_scenes_only(world: Path) -> None:
    """Silkie's instructions of MMHal-Bench's kinds: training scenes, no question repeated, scripted failures hold."""
    from silkfire.vlfeedback.judges import make_judge
    from silkfire.vlfeedback.pair_rule import completion_score
    from silkfire.io import read_records

    mmhal = world_instructions(world, families=["mmhal"])
    split = {(r["scene_id"], r["question"]) for r in read_records(world / "train.jsonl")}
    assert mmhal and {i.family for i in mmhal} == {"mmhal"}
    assert all(i.scene is not None and i.scene.split == "train" for i in mmhal)
    assert not {(i.scene.scene_id, i.prompt) for i in mmhal if i.scene} & split  # nothing the split already asks
    mixed = world_instructions(world, families=["open", "mmhal"])
    assert {i.id for i in mmhal} <= {i.id for i in mixed}
    correct, hallucinate = _answers("correct", mmhal), _answers("hallucinate", mmhal)
    assert correct == [i.answer for i in mmhal]
    assert all(h != c for h, c in zip(hallucinate, correct))  # an invented object added
    pool = build_pool({"correct": {"kind": "scripted"}, "hallucinate": {"kind": "scripted"}}, world,
                      SamplingDefaults(progress=False), WorldConfig())
    records, _ = sample_responses(mmhal, pool, world, k=2, seed=0, progress=False)
    annotated = make_judge({"kind": "oracle"}, world_dir=world).annotate(records, image_root=world)
    for record in annotated:
        score = {c["model"]: completion_score(c["annotations"]) for c in record["completions"]}
        assert score["correct"] > score["hallucinate"], record["prompt"]


def test_draws_are_seeded_per_instruction_and_follow_weights() -> None:
    pool = build_pool({**SCRIPTED, "correct": {"kind": "scripted", "weight": 6.0}}, Path("."),
                      SamplingDefaults(), WorldConfig())
    first = draw_policies("scene-1/open/count/0", pool, 4, seed=0)
    assert first == draw_policies("scene-1/open/count/0", pool, 4, seed=0)
    assert len(set(first)) == 4
    draws = Counter(name for n in range(600) for name in draw_policies(f"i{n}", pool, 2, seed=1))
    assert draws["correct"] > 1.8 * max(count for name, count in draws.items() if name != "correct")
    with pytest.raises(ValueError, match="cannot draw 7 distinct policies"):
        draw_policies("x", pool, 7, seed=0)


def test_pool_config_errors_name_the_entry(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"silkie\.sample\.pool\.odd\.kind"):
        build_pool({"odd": {"kind": "nope"}}, tmp_path, SamplingDefaults(), WorldConfig())
    with pytest.raises(ValueError, match=r"silkie\.sample\.pool\.m\.path"):
        build_pool({"m": {"kind": "hf"}}, tmp_path, SamplingDefaults(), WorldConfig())
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]"):
        build_pool({"correct": {"kind": "scripted", "colour": 1}}, tmp_path, SamplingDefaults(), WorldConfig())
    with pytest.raises(ValueError, match="unknown scripted profile"):
        build_pool({"sloppy": {"kind": "scripted"}}, tmp_path, SamplingDefaults(), WorldConfig())
    real = Instruction(id="vlf-1", prompt="What is this?", image="images/a.png")
    with pytest.raises(PolicyError, match="vlf-1"):
        ScriptedPolicy("correct", WorldConfig()).respond([real], tmp_path, 0)


def test_model_policies_sample_reproducibly_and_checkpoints_expand(world: Path, instructions: list[Instruction],
                                                                   tmp_path: Path) -> None:
    model = make_test_model(tmp_path / "sft" / "model")
    for step in (2, 4):
        shutil.copytree(model, tmp_path / "sft" / "checkpoints" / f"checkpoint-{step}")
    entries = {"sft": {"kind": "hf", "path": "sft/model", "temperature": 1.0},
               "step": {"kind": "checkpoints", "path": "sft/checkpoints", "weight": 2.0},
               "greedy": {"kind": "hf", "path": "sft/model", "temperature": 0.0}}
    pool = build_pool(entries, tmp_path, SamplingDefaults(max_new_tokens=4, batch_size=8, progress=False))
    assert sorted(pool) == ["greedy", "sft", "step-2", "step-4"] and pool["step-2"].weight == 1.0
    subset = instructions[:8]
    first = pool["sft"].policy.respond(subset, world, seed=5)
    assert first == pool["sft"].policy.respond(subset, world, seed=5)
    assert first != pool["sft"].policy.respond(subset, world, seed=6)  # a random model at T=1 varies
    assert all(text.strip() for text in first)
    greedy = pool["greedy"].policy.respond(subset, world, seed=0)
    assert greedy == pool["greedy"].policy.respond(subset, world, seed=99)
    records, stats = sample_responses(subset, pool, world, k=4, seed=0, progress=False)
    assert all(len(r["completions"]) == 4 and r["models"] == [c["model"] for c in r["completions"]] for r in records)
    assert sum(stats["responses"].values()) == 32 and all(r["scene_id"] and r["answer"] for r in records)


def test_api_policy_answers_through_a_flaky_openai_server(world: Path, instructions: list[Instruction],
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from silkfire.llm.testing import FakeChatServer

    def reply(body: dict) -> str:
        text = next(p["text"] for p in body["messages"][0]["content"] if p["type"] == "text")
        assert body["messages"][0]["content"][0]["type"] == "image_url"  # image first, as a data URL
        return f"answer to: {text}"

    monkeypatch.setenv("POOL_TEST_KEY", "sk-test-123")
    subset = instructions[:10]
    with FakeChatServer(reply, fault_rate=0.3, fault_kinds=("500", "429", "malformed"), seed=2,
                        api_key="sk-test-123") as server:
        entries = {"served": {"kind": "api", "base_url": server.url, "model": "llava", "api_key_env": "POOL_TEST_KEY",
                              "max_retries": 8, "backoff_base_s": 0.0, "timeout_s": 5.0}}
        pool = build_pool(entries, tmp_path, SamplingDefaults(max_new_tokens=32))
        answers = pool["served"].policy.respond(subset, world, seed=0)
        assert sum(server.faults.values()) > 0
    assert answers == [f"answer to: {i.prompt}" for i in subset]
    usage = pool["served"].policy.metrics()
    assert usage["served_calls"] == 10 and usage["served_prompt_tokens"] > 0
    assert "sk-test-123" not in str(pool["served"].policy.describe())

    with FakeChatServer("x", fault_rate=1.0, fault_kinds=("500",)) as server:
        broken = build_pool({"down": {"kind": "api", "base_url": server.url, "model": "m", "max_retries": 1,
                                      "backoff_base_s": 0.0}}, tmp_path, SamplingDefaults())
        with pytest.raises(PolicyError, match=r"policy 'down'.*10 request\(s\) failed"):
            broken["down"].policy.respond(subset, world, seed=0)


def test_feedback_prompts_are_instructions(tmp_path: Path) -> None:
    from silkfire.io import write_jsonl

    write_jsonl(tmp_path / "vlf.jsonl", [
        {"id": "svit-1", "prompt": "What is shown?", "img_path": "merged_images/svit-1.jpg", "models": [],
         "completions": {"model": [], "response": [], "annotations": []}},
        {"id": "lrv-2", "prompt": "Describe it.", "img_path": "merged_images/lrv-2.jpg"},
    ])
    found = feedback_instructions(tmp_path / "vlf.jsonl")
    assert [(i.id, i.image, i.scene) for i in found] == [("lrv-2", "merged_images/lrv-2.jpg", None),
                                                          ("svit-1", "merged_images/svit-1.jpg", None)]
    write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "prompt": "p", "img_path": ""}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: field 'img_path'"):
        feedback_instructions(tmp_path / "bad.jsonl")
