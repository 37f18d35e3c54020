"""Every option of every config group composes, and each group is accepted by the typed config that reads it."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from silkfire.config import compose, flatten, write_params

ROOT = Path(__file__).resolve().parents[1]
GROUPS = sorted(p.name for p in (ROOT / "conf").iterdir() if p.is_dir())
OPTIONS = [(group, option.stem) for group in GROUPS for option in sorted((ROOT / "conf" / group).glob("*.yaml"))]


def _typed(cfg) -> None:
    """Build the typed config of each group that has one: unknown or malformed keys fail here."""
    from silkfire.models.config import ModelConfig
    from silkfire.quality import QualityConfig
    from silkfire.train.sft import SFTConfig
    from silkfire.world import WorldConfig

    WorldConfig.from_mapping(cfg.world)
    ModelConfig.from_mapping(cfg.model)
    SFTConfig.from_mapping(cfg.train)
    QualityConfig.from_mapping(cfg.quality)


def test_every_group_has_an_option() -> None:
    assert {"world", "model", "train", "eval", "quality", "tracking", "experiment"} <= set(GROUPS)
    assert all(any(g == group for g, _ in OPTIONS) for group in GROUPS)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_builds_typed_configs(group: str, option: str) -> None:
    cfg = compose([f"{group}={option}"], ROOT)
    assert not OmegaConf.missing_keys(cfg)
    _typed(cfg)


def test_experiment_files_hold_only_differences() -> None:
    for path in (ROOT / "conf" / "experiment").glob("*.yaml"):
        assert path.read_text().lstrip().startswith("# @package _global_"), path.name


def test_overrides_reach_the_composed_config() -> None:
    cfg = compose(["train.learning_rate=0.5", "experiment=smoke"], ROOT)
    assert cfg.train.learning_rate == 0.5
    assert cfg.world.train_scenes == OmegaConf.load(ROOT / "conf/experiment/smoke.yaml").world.train_scenes


def test_interpolations_are_resolved_for_dvc() -> None:
    """DVC compares literal values in params.yaml: no `${...}` may survive composition."""
    cfg = compose(["world.image_size=32", "model.vision.image_size=32"], ROOT)
    assert cfg.quality.image_size == 32
    assert not any(isinstance(v, str) and "${" in v for v in flatten(cfg).values())


def test_write_params_touches_the_file_only_on_change(tmp_path: Path) -> None:
    root = tmp_path
    (root / "conf").symlink_to(ROOT / "conf")
    _, changed = write_params([], root)
    assert changed
    first = (root / "params.yaml").stat().st_mtime_ns
    _, changed = write_params([], root)
    assert not changed and (root / "params.yaml").stat().st_mtime_ns == first
    _, changed = write_params(["seed=1"], root)
    assert changed and OmegaConf.load(root / "params.yaml").seed == 1
