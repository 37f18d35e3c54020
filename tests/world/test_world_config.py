"""WorldConfig: YAML defaults, mapping round-trip, refusal of unknown keys and unusable values."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from silkfire.world import WorldConfig

SHAPES_YAML = Path(__file__).resolve().parents[2] / "conf" / "world" / "shapes.yaml"


def test_yaml_defaults_match_the_dataclass() -> None:
    config = WorldConfig.from_mapping(OmegaConf.load(SHAPES_YAML))
    assert config == WorldConfig()
    assert config.rows == config.cols == 3
    assert config.image_size == 48 and config.image_size % config.rows == 0  # one vision patch per cell


def test_yaml_has_no_hydra_interpolations() -> None:
    assert "${" not in SHAPES_YAML.read_text(encoding="utf-8")


def test_to_dict_round_trips() -> None:
    config = WorldConfig.from_mapping({"train_scenes": 7, "colors": {"red": [255, 0, 0], "blue": [0, 0, 255]}})
    assert WorldConfig.from_mapping(config.to_dict()) == config
    assert config.color_names == ("blue", "red")  # sorted: key order never changes a seeded draw
    assert WorldConfig.from_mapping({"colors": {"blue": [0, 0, 255], "red": [255, 0, 0]}}).colors == config.colors
    assert config.rgb("blue") == (0, 0, 255)
    hash(config)  # frozen and hashable


def test_unknown_keys_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['n_scenes'\].*allowed keys"):
        WorldConfig.from_mapping({"n_scenes": 10})


@pytest.mark.parametrize(
    ("mapping", "pattern"),
    [
        ({"max_objects": 9}, "max_objects must be < the number of grid cells"),
        ({"min_objects": 3, "max_objects": 2}, "min_objects <= max_objects"),
        ({"shapes": ["circle", "hexagon"]}, "shapes must be distinct names"),
        ({"colors": {"red": [230, 40, 40], "pink": [240, 60, 60]}}, "too close"),
        ({"background": [235, 195, 40]}, "yellow.*background.*too close"),
        ({"colors": {"red": [300, 0, 0], "blue": [0, 0, 255]}}, "bad value for 'colors'"),
        ({"probe_rate": 1.5}, "probe_rate"),
        ({"test_scenes": 0}, "test_scenes"),
        ({"image_size": "big"}, "bad value for 'image_size'"),
        ({"sizes": {"tiny": 0.05}}, "sizes"),
    ],
)
def test_bad_values_are_refused(mapping: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        WorldConfig.from_mapping(mapping)


def test_non_mapping_is_refused() -> None:
    with pytest.raises(ValueError, match="expected a mapping"):
        WorldConfig.from_mapping(["image_size", 64])
