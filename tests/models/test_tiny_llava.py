"""Build a tiny LLaVA from config, save it (safetensors) and reload it offline through the Auto classes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from silkfire.models.config import ModelConfig
from silkfire.models.testing import TEST_MODEL, make_test_model

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def test_saved_as_safetensors_with_processor_files(model_dir: Path):
    names = {path.name for path in model_dir.iterdir()}
    assert "model.safetensors" in names and "config.json" in names
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in names)
    assert {"processor_config.json", "tokenizer.json", "chat_template.jinja"} <= names


def test_reloads_offline_through_auto_classes_with_one_image_token_per_cell(model_dir: Path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

    model = AutoModelForImageTextToText.from_pretrained(model_dir, local_files_only=True, use_safetensors=True)
    processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    assert isinstance(model, LlavaForConditionalGeneration)
    assert type(processor).__name__ == "LlavaProcessor"
    assert type(processor.image_processor).__name__ == "CLIPImageProcessorPil"

    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a red circle?"}]}],
        add_generation_prompt=True,
    )
    inputs = processor(text=[prompt], images=[Image.new("RGB", (48, 48), "red")], return_tensors="pt")
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == 9  # one token per grid cell
    assert model.config.image_seq_length == 9
    assert inputs["pixel_values"].shape == (1, 3, 48, 48)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(processor.tokenizer))
    assert torch.isfinite(logits).all()


def test_build_is_seeded(tmp_path: Path):
    from safetensors.torch import load_file

    first = load_file(make_test_model(tmp_path / "a", seed=3) / "model.safetensors")
    again = load_file(make_test_model(tmp_path / "b", seed=3) / "model.safetensors")
    other = load_file(make_test_model(tmp_path / "c", seed=4) / "model.safetensors")
    assert first.keys() == again.keys()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


def test_model_config_from_mapping_nested_and_errors():
    cfg = ModelConfig.from_mapping(TEST_MODEL)
    assert cfg.vision.num_image_tokens == 9 and cfg.text.hidden_size == 64
    with pytest.raises(ValueError, match="unknown key.*'hidden'"):
        ModelConfig.from_mapping({"text": {"hidden": 3}})
    with pytest.raises(ValueError, match="unknown key.*'colour'"):
        ModelConfig.from_mapping({"colour": 1})
    with pytest.raises(ValueError, match="name_or_path"):
        ModelConfig.from_mapping({"source": "pretrained"})
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ModelConfig.from_mapping({"vision": {"image_size": 60, "patch_size": 8}})


@pytest.mark.parametrize("name", ["tiny_llava", "llava_1_5_7b", "qwen2_vl_7b", "llava_next_8b"])
def test_conf_model_files_parse(name: str):
    from omegaconf import OmegaConf

    cfg = ModelConfig.from_mapping(OmegaConf.load(PROJECT_ROOT / "conf" / "model" / f"{name}.yaml"))
    if name == "tiny_llava":
        assert cfg.source == "build" and cfg.vision.num_image_tokens == 9
        assert cfg.checkpoint_files == "src/silkfire/models"
    else:
        hub = {"llava_1_5_7b": "llava-hf/llava-1.5-7b-hf", "qwen2_vl_7b": "Qwen/Qwen2-VL-7B-Instruct",
               "llava_next_8b": "llava-hf/llama3-llava-next-8b-hf"}[name]
        assert cfg.source == "pretrained" and cfg.name_or_path == hub == cfg.checkpoint_files
        assert cfg.dtype == "bfloat16"
