"""load_vlm: one offline loading path, clear errors; prepare_base_model for build and pretrained sources."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from silkfire.models.config import ModelConfig
from silkfire.models.loading import ModelLoadError, load_vlm, prepare_base_model
from silkfire.models.testing import TEST_MODEL, make_test_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_model(tmp_path_factory.mktemp("tiny") / "model")


def test_load_local_directory_as_path_or_string(model_dir: Path):
    for source in (model_dir, str(model_dir)):
        model, processor = load_vlm(source)
        assert not model.training
        assert next(model.parameters()).dtype == torch.float32
        assert processor.image_token_id == model.config.image_token_id


def test_load_in_bfloat16(model_dir: Path):
    model, _ = load_vlm(model_dir, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_missing_directory_gives_a_clear_error(tmp_path: Path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="does not exist.*run the stage"):
        load_vlm(missing)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_vlm(f"{missing}/nested")


def test_directory_without_config_is_refused(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_vlm(tmp_path / "empty")


def test_unknown_hub_name_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        load_vlm("silkfire-test/definitely-not-cached")


def test_bad_dtype_is_refused(model_dir: Path):
    with pytest.raises(ValueError, match="dtype"):
        load_vlm(model_dir, dtype="float64")


def test_prepare_base_model_build_and_pretrained(tmp_path: Path):
    built = prepare_base_model(ModelConfig.from_mapping(TEST_MODEL), ["Is there a red circle?", "Yes"],
                               tmp_path / "base", seed=1)
    assert Path(built) == tmp_path / "base" and (tmp_path / "base" / "model.safetensors").is_file()
    model, processor = load_vlm(built)
    assert model.config.text_config.vocab_size == len(processor.tokenizer)

    hub = ModelConfig.from_mapping({"source": "pretrained", "name_or_path": "llava-hf/llava-1.5-7b-hf",
                                    "dtype": "bfloat16"})
    assert prepare_base_model(hub, [], tmp_path / "unused") == "llava-hf/llava-1.5-7b-hf"
    assert not (tmp_path / "unused").exists()
    local = ModelConfig.from_mapping({"source": "pretrained", "name_or_path": str(tmp_path / "base")})
    assert prepare_base_model(local, [], tmp_path / "unused") == tmp_path / "base"
