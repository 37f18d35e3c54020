"""LoRA option (PEFT) on the tiny LLaVA: adapters only where asked, merge = same function, SFT with LoRA + resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from silkfire.models.loading import load_vlm
from silkfire.models.testing import make_test_model, make_test_world
from silkfire.train.lora import LoraOptions, apply_lora, is_lora, merge_lora
from silkfire.train.sft import SFTConfig, train_sft


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_model(tmp_path_factory.mktemp("base") / "model")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_world(tmp_path_factory.mktemp("world"), train_scenes=2, val_scenes=1, test_scenes=1)


def _inputs(processor) -> dict[str, torch.Tensor]:
    from PIL import Image

    image = Image.new("RGB", (64, 64), (200, 30, 30))
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many circles are there?"}]}],
        add_generation_prompt=True, tokenize=False)
    return dict(processor(text=[prompt], images=[image], return_tensors="pt"))


def test_options_from_mapping_validate_and_switch_off() -> None:
    assert LoraOptions.from_mapping(None) is None
    assert LoraOptions.from_mapping({"enabled": False}) is None
    options = LoraOptions.from_mapping({"r": 4, "alpha": 8, "target_modules": ["q_proj"]})
    assert options is not None and options.target_modules == ("q_proj",)
    with pytest.raises(ValueError, match="unknown key"):
        LoraOptions.from_mapping({"rank": 4})
    with pytest.raises(ValueError, match="r >= 1"):
        LoraOptions(r=0)


def test_adapters_only_on_the_language_models_qkv_and_the_projector_trains_fully(base: Path) -> None:
    model, _ = load_vlm(base)
    options = LoraOptions(r=4, alpha=16, dropout=0.0, modules_to_save=("multi_modal_projector",))
    wrapped, report = apply_lora(model, options)
    assert report.adapted_modules and all("language_model" in n for n in report.adapted_modules)
    assert {n.rsplit(".", 1)[-1] for n in report.adapted_modules} == {"q_proj", "k_proj", "v_proj"}
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "multi_modal_projector" in n for n in trainable)
    assert not any("vision_tower" in n for n in trainable)  # CLIP's own q/k/v_proj stay frozen
    assert 0 < report.trainable_parameters < report.total_parameters


def test_no_matching_module_names_the_leaf_modules(base: Path) -> None:
    model, _ = load_vlm(base)
    with pytest.raises(ValueError, match="q_proj"):
        apply_lora(model, LoraOptions(r=2, target_modules=("query",)))


def test_merged_model_computes_what_the_adapted_one_does_and_reloads(base: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, processor = load_vlm(base)
    inputs = _inputs(processor)
    wrapped, _ = apply_lora(model, LoraOptions(r=4, alpha=16, dropout=0.0))
    with torch.no_grad():  # B is zero at init: the adapted model starts as the base model
        before = wrapped(**inputs).logits
        for name, parameter in wrapped.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
        adapted = wrapped(**inputs).logits
    assert not torch.allclose(before, adapted, atol=1e-4)
    merged = merge_lora(wrapped)
    assert not is_lora(merged)
    merged.save_pretrained(tmp_path / "merged")
    processor.save_pretrained(tmp_path / "merged")
    reloaded, _ = load_vlm(tmp_path / "merged")
    with torch.no_grad():
        assert torch.allclose(merged(**inputs).logits, adapted, atol=1e-4)
        assert torch.allclose(reloaded(**inputs).logits, adapted, atol=1e-4)


def test_sft_with_lora_trains_adapters_merges_and_resumes(base: Path, world: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    values = dict(learning_rate=5e-3, max_steps=6, batch_size=8, warmup_ratio=0.0, logging_steps=1, save_steps=3,
                  eval_steps=0, max_eval_samples=8, num_threads=2, families=["mme"], max_samples=16,
                  progress=False, lr_scheduler="constant",
                  lora={"r": 4, "alpha": 16, "dropout": 0.0, "modules_to_save": ["multi_modal_projector"]})
    out = tmp_path / "sft"
    result = train_sft(base, world / "train.jsonl", world / "val.jsonl", world, SFTConfig.from_mapping(values), out)
    assert result.metrics["lora_adapted_modules"] == 6  # q, k, v in each of the 2 language-model layers
    saved = load_file(out / "model" / "model.safetensors")
    original = load_file(Path(base) / "model.safetensors")
    assert set(saved) == set(original), "the merged model must be a plain model folder"
    changed = {k for k in saved if not torch.equal(saved[k], original[k])}
    assert changed and all(("q_proj" in k or "k_proj" in k or "v_proj" in k or "projector" in k)
                           and "vision" not in k for k in changed), sorted(changed)
    assert (out / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors").is_file()

    # resume from the step-3 adapter checkpoint to the same end point
    resumed_out = tmp_path / "resumed"
    (resumed_out / "checkpoints").mkdir(parents=True)
    import shutil

    shutil.copytree(out / "checkpoints" / "checkpoint-3", resumed_out / "checkpoints" / "checkpoint-3")
    again = train_sft(base, world / "train.jsonl", world / "val.jsonl", world,
                      SFTConfig.from_mapping({**values, "resume": True}), resumed_out)
    assert again.metrics["global_step"] == 6
    resumed = load_file(resumed_out / "model" / "model.safetensors")
    for key in changed:
        assert torch.allclose(resumed[key], saved[key], atol=1e-5), key


def test_sft_config_rejects_bad_lora_before_training() -> None:
    with pytest.raises(ValueError, match="unknown key"):
        SFTConfig.from_mapping({"lora": {"rank": 8}})
