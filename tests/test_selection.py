"""Choices read validation figures only: the champion gate, sweeps and the recipe grid never touch a test set."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from silkfire.selection import TEST_FILES, SelectionError, is_test_figure, require_validation_metric
from silkfire.sweeps import SweepError, run_sweep
from silkfire.tracking.champion import ChampionRule

ROOT = Path(__file__).resolve().parents[1]
# every piece of code that makes a choice from benchmark figures
SELECTION_CODE = ("benchmarks/grounding_grid.py", "src/silkfire/sweeps.py", "src/silkfire/tracking/champion.py",
                  "src/silkfire/stages/register.py", "conf/register/default.yaml")


def test_test_figures_are_told_apart_from_validation_figures() -> None:
    assert is_test_figure("evaluate", "mme.sft.perception")
    assert is_test_figure("fire_bench", "free.oracle.fire.RR")
    assert not is_test_figure("evaluate", "val.mme.sft.perception")
    assert not is_test_figure("evaluate_dpo", "val.dpo.mmhal_score")
    assert not is_test_figure("sft", "eval_loss")  # not an evaluation stage: its eval set is val.jsonl
    with pytest.raises(SelectionError, match=r"use the validation key evaluate\.val\.mme\.sft\.perception"):
        require_validation_metric("evaluate", "mme.sft.perception", "register")


def test_the_champion_gate_refuses_a_test_metric() -> None:
    with pytest.raises(SelectionError, match="test-set figure"):
        ChampionRule.from_mapping({"primary": {"metric": "mme.sft.perception"}})
    with pytest.raises(SelectionError, match="guard|test-set figure"):
        ChampionRule.from_mapping({"primary": {"metric": "val.mme.sft.perception"},
                                   "guards": {"mme.sft.cognition": {"tolerance": 5}}})
    rule = ChampionRule.from_mapping({"primary": {"metric": "val.mme.sft.perception"}})
    assert rule.primary.metric == "val.mme.sft.perception"


def test_the_default_champion_rule_reads_validation_figures() -> None:
    import yaml

    cfg = yaml.safe_load((ROOT / "conf/register/default.yaml").read_text())
    rule = ChampionRule.from_mapping(cfg)  # would raise on a test key
    assert all(objective.metric.startswith("val.") for objective in rule.objectives)


def test_a_sweep_refuses_to_choose_on_a_test_figure_before_running_anything(tmp_path: Path) -> None:
    with pytest.raises(SweepError, match="test-set figure"):
        run_sweep(["train.learning_rate=1e-3,2e-3"], "evaluate.mme.sft.perception", root=tmp_path)
    with pytest.raises(SweepError, match="test-set figure"):
        run_sweep(["fire.seed=0,1"], "fire_bench.free.oracle.fire.RR", root=tmp_path)


@pytest.mark.parametrize("relative", SELECTION_CODE)
def test_selection_code_names_no_test_file(relative: str) -> None:
    """No string in the selection code names a test file of the world (mme.jsonl, open.jsonl)."""
    path = ROOT / relative
    text = path.read_text()
    if path.suffix == ".py":
        strings = [node.value for node in ast.walk(ast.parse(text))
                   if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    else:
        strings = [text]
    named = [name for name in TEST_FILES for string in strings if name in string.replace("mme_val.jsonl", "")]
    assert not named, f"{relative} names the test file(s) {named}: choices must read the val sets"


def test_the_recipe_grid_opens_the_validation_set_only(tmp_path: Path) -> None:
    """The grid's evaluation set, watched with an audit hook while the grid reads it: val file opened, no test file."""
    import importlib.util
    import sys

    from silkfire.world import WorldConfig, generate_world

    world = tmp_path / "world"
    generate_world(WorldConfig(train_scenes=4, val_scenes=3, test_scenes=3), world, progress=False)
    spec = importlib.util.spec_from_file_location("grounding_grid", ROOT / "benchmarks/grounding_grid.py")
    grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grid)
    opened: list[str] = []

    def watch(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, Path)):
            opened.append(str(args[0]))

    sys.addaudithook(watch)  # hooks cannot be removed: it only appends to a list this test owns
    records = grid.selection_records(world)
    seen = list(opened)
    opened.clear()
    assert records and all(record["question_id"].split("/")[1].startswith("val-") for record in records)
    assert any(path.endswith("mme_val.jsonl") for path in seen)
    assert not [path for path in seen if Path(path).name in TEST_FILES], seen
