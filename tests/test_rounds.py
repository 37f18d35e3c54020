"""Alignment rounds without running a round: the replay draw, a round's overrides (they compose, and they say what the
round changes), the pairs stage's refusal of a replay file that changed, the curve's table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from silkfire.vlfeedback.pair_rule import replay_pairs
from silkfire.rounds import Round, final_champion, markdown, round_overrides, table_rows


def pair(index: int, prompt: str = "q") -> dict:
    return {"id": f"p{index}", "img_path": "a.png", "prompt": prompt, "chosen": f"good {index}",
            "rejected": f"bad {index}", "chosen_score": 5.0, "rejected_score": 1.0}


def test_replay_draws_the_share_from_earlier_rounds_without_repeats() -> None:
    new = [pair(i) for i in range(30)]
    earlier = [("round1", [pair(i) for i in range(20, 60)]), ("round2", [pair(i) for i in range(50, 70)])]
    drawn = replay_pairs(new, earlier, share=0.25, seed=3)
    assert len(drawn) == 10  # 10 / (30 + 10) = 0.25
    texts = [(p["chosen"], p["rejected"]) for p in drawn]
    assert len(set(texts)) == len(texts)  # round2's copies of 50..59 are not drawn twice
    assert not {p["chosen"] for p in drawn} & {p["chosen"] for p in new}  # never a pair this round has
    assert all(p["id"].startswith(("round1/", "round2/")) for p in drawn)
    assert drawn == replay_pairs(new, earlier, share=0.25, seed=3)  # seeded
    assert drawn != replay_pairs(new, earlier, share=0.25, seed=4)


def test_replay_takes_what_there_is_and_refuses_a_bad_share() -> None:
    assert len(replay_pairs([pair(i) for i in range(30)], [("round1", [pair(100)])], 0.5, 0)) == 1
    assert replay_pairs([pair(0)], [("round1", [pair(1)])], 0.0, 0) == []
    with pytest.raises(ValueError, match="share"):
        replay_pairs([pair(0)], [], 1.0, 0)


def test_round_overrides_compose_and_set_the_start_pool_seed_and_replay() -> None:
    from silkfire.config import compose

    start = {"model": "silkfire-dpo", "version": 4, "path": "models/champion/silkfire-dpo-v4/artifacts/hf_model"}
    replay = [{"path": "data/rounds/r/round-1.pairs.jsonl", "md5": "0123456789" * 3 + "ab", "label": "round1"}]
    overrides = round_overrides(["experiment=smoke"], 3, 10, start, replay, 0.25)
    cfg = compose(overrides, Path(__file__).resolve().parents[1])
    assert cfg.silkie.seed == 12
    assert cfg.silkie.start_model == start["path"]
    assert cfg.silkie.sample.pool.champion.path == start["path"]
    assert list(cfg.pipeline.branches) == ["silkie"]
    sources = cfg.silkie.pairs.replay.sources
    assert cfg.silkie.pairs.replay.share == 0.25 and sources[0].md5 == replay[0]["md5"]  # all digits: still a string
    assert isinstance(sources[0].md5, str)
    # round 1 from the SFT model: no champion pool member, nothing to replay -- the one-round pipeline's config
    first = compose(round_overrides(["experiment=smoke"], 1, 10, {"model": "sft", "version": None,
                                                                   "path": "models/sft/model"}, [], 0.25),
                    Path(__file__).resolve().parents[1])
    assert first.silkie.sample.pool.champion is None and first.silkie.start_model == "models/sft/model"
    assert first.silkie.pairs.replay.share == 0.0 and first.silkie.seed == 10


def test_the_pairs_stage_refuses_a_replay_file_that_changed(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from silkfire.io import file_digest, write_jsonl
    from silkfire.stages.pairs import replay

    archived = tmp_path / "data" / "rounds" / "round-1.pairs.jsonl"
    write_jsonl(archived, [pair(i) for i in range(10, 20)])
    source = {"path": "data/rounds/round-1.pairs.jsonl", "md5": file_digest(archived), "label": "round1"}
    cfg = OmegaConf.create({"silkie": {"seed": 0, "pairs": {"replay": {"share": 0.5, "sources": [source]}}}})
    assert len(replay(cfg, tmp_path, [pair(i) for i in range(4)])) == 4
    write_jsonl(archived, [pair(i) for i in range(10, 21)])
    with pytest.raises(ValueError, match=r"replay.sources\[0\].*md5"):
        replay(cfg, tmp_path, [pair(0)])
    archived.unlink()
    with pytest.raises(FileNotFoundError, match="round-1.pairs.jsonl is missing"):
        replay(cfg, tmp_path, [pair(0)])


def test_the_curve_table_names_starts_decisions_and_the_final_champion() -> None:
    figures = {"val_mmhal_score": 2.0, "val_hallucination_rate": 0.5, "val_mme_perception": 600.0,
               "test_mmhal_score": 1.9, "test_hallucination_rate": 0.52}
    rounds = [
        Round(1, 0, {"model": "sft", "version": None, "path": "x"}, [], status="done", pairs=40, replayed=0,
              challenger_version=1, promoted=True, champion_after={"model": "silkfire-dpo", "version": 1},
              challenger=figures | {"val_mmhal_score": 2.2}, start_figures=figures),
        Round(2, 1, {"model": "silkfire-dpo", "version": 1, "path": "y"}, [], status="done", pairs=50, replayed=10,
              challenger_version=2, promoted=False, champion_after={"model": "silkfire-dpo", "version": 1},
              challenger=figures, start_figures=figures | {"val_mmhal_score": 2.2}),
        Round(3, 2, {"model": "silkfire-dpo", "version": 1, "path": "y"}, []),  # interrupted: planned only
    ]
    rows = table_rows(rounds)
    assert [(r["round"], r["start"], r["promoted"], r["champion_after"]) for r in rows] == [
        (1, "SFT", True, "v1"), (2, "v1", False, "v1")]
    text = markdown(rounds)
    assert "| 2 | v1 | 50 (10) | v2 | 2.000 (start 2.200)" in text
    assert final_champion(rounds) == {"round": 1, "label": "v1",
                                      "test": {"test_mmhal_score": 1.9, "test_hallucination_rate": 0.52}}
    assert "Final champion: v1 (round 1)" in text
    assert json.dumps(rows)  # the JSON artefact
