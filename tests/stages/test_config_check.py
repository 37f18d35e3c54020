"""A wrong setting fails when the config is composed, naming the stage and key, before any stage runs (issue 15)."""

from __future__ import annotations

from pathlib import Path

import pytest

from silkfire.config import compose, write_params
from silkfire.stages import ALL_STAGES, pipeline_stages
from silkfire.stages.runner import ConfigError, check_config, stage_module

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_config_passes_every_stage() -> None:
    check_config(compose([], ROOT), ALL_STAGES)


@pytest.mark.parametrize(("override", "stage", "words"), [
    ("train.turns_per_sample=0", "sft", "turns_per_sample"),
    ("silkie.dpo.beta=-1", "dpo", "beta"),
    ("fire.sft.teacher.batch_size=0", "fire_teacher", "batch_size"),
    ("register.primary.metric=mme.sft.perception", "register", "test"),  # the champion rule reads val only
])
def test_a_bad_setting_names_its_stage(override: str, stage: str, words: str) -> None:
    with pytest.raises(ConfigError) as raised:
        check_config(compose([override], ROOT), ALL_STAGES)
    assert f"stage {stage}:" in str(raised.value) and words in str(raised.value)


def test_a_typoed_key_is_refused_before_any_stage_parser() -> None:
    """A key no conf/ file declares fails when the config is composed (silkfire.config_schema), with the key it
    probably meant: the stages' parsers never see it."""
    from silkfire.config_schema import UnknownConfigKeyError

    with pytest.raises(UnknownConfigKeyError, match=r"train\.learning_rat: .*did you mean train\.learning_rate"):
        compose(["+train.learning_rat=0.1"], ROOT)


def test_only_the_stages_that_run_are_checked() -> None:
    """A foundation-only pipeline does not refuse a setting of a branch it will not run."""
    cfg = compose(["silkie.dpo.beta=-1"], ROOT)
    check_config(cfg, pipeline_stages([]))
    with pytest.raises(ConfigError, match="stage dpo"):
        check_config(cfg, pipeline_stages(["silkie"]))


def test_params_yaml_is_not_written_for_a_refused_config(tmp_path: Path) -> None:
    import shutil

    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    with pytest.raises(ConfigError):
        write_params(["train.turns_per_sample=0"], tmp_path, check=lambda cfg: check_config(cfg, ALL_STAGES))
    assert not (tmp_path / "params.yaml").exists()


def test_every_stage_with_typed_settings_has_a_check() -> None:
    """The stages whose run parses a settings dataclass expose the same parser as `check`."""
    for stage in ("generate", "validate", "base", "sft", "register", "sample", "annotate", "validate_feedback", "pairs",
                  "dpo", "register_dpo", "validate_dialogues", "fire_student", "fire_teacher"):
        assert callable(getattr(stage_module(stage), "check", None)), stage
