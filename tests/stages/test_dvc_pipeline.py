"""dvc.yaml and the stage modules agree: same stages, same order, exact param keys, own code as a dependency."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from silkfire.config import compose
from silkfire.stages import STAGES
from silkfire.stages.runner import stage_module

ROOT = Path(__file__).resolve().parents[2]
DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_dvc_stages_are_the_pipeline_stages_in_order() -> None:
    assert tuple(DVC_YAML["stages"]) == STAGES


@pytest.mark.parametrize("stage", STAGES)
def test_stage_params_match_module(stage: str) -> None:
    declared = DVC_YAML["stages"][stage]["params"]
    assert sorted(declared) == sorted(stage_module(stage).PARAMS), (
        f"dvc.yaml params of {stage!r} differ from silkfire.stages.{stage}.PARAMS"
    )


@pytest.mark.parametrize("stage", STAGES)
def test_stage_depends_on_its_code_and_runs_its_module(stage: str) -> None:
    spec = DVC_YAML["stages"][stage]
    assert f"src/silkfire/stages/{stage}.py" in spec["deps"]
    assert spec["cmd"] == f"silkfire stage {stage}"
    for dep in spec["deps"]:
        if not dep.startswith("${"):
            assert (ROOT / dep).exists(), f"{stage}: dependency {dep} does not exist"


@pytest.mark.parametrize("stage", STAGES)
def test_declared_param_keys_exist_in_config(stage: str) -> None:
    cfg = compose([], ROOT)
    for key in stage_module(stage).PARAMS:
        assert OmegaConf.select(cfg, key, default="__missing__") != "__missing__", f"{stage}: {key} not in config"


def test_training_never_starts_before_the_gate() -> None:
    """sft depends on validate's output, so DVC cannot order it before the data-quality gate."""
    assert "${paths.reports}/validate" in DVC_YAML["stages"]["sft"]["deps"]
    assert "${paths.reports}/validate" in DVC_YAML["stages"]["validate"]["outs"]


def test_params_yaml_is_the_composed_default_config() -> None:
    """params.yaml in git is what `dvc exp run` / `silkfire params` compose from conf/ with no overrides."""
    committed = OmegaConf.load(ROOT / "params.yaml")
    assert OmegaConf.to_container(committed) == OmegaConf.to_container(compose([], ROOT))
