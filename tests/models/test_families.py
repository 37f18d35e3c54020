"""Real architectures: tiny checkpoints of LLaVA-1.5 (llava-hf), LLaVA-NeXT and Qwen2-VL built with transformers'
own classes in their hub layout, loaded through the one loading path, checked, frozen, LoRA-wrapped and encoded
the way each family expects; unsupported folders are refused naming what is supported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from silkfire.models.families import (FAMILIES, UnsupportedModel, check_checkpoint, checkpoint_digest, family_of,
                                      part_parameters)
from silkfire.models.loading import load_vlm
from silkfire.models.testing import REAL_FAMILIES, make_real_checkpoint, make_test_model
from silkfire.train.data import IGNORE_INDEX, SFTCollator, encode_sft_records


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {family: make_real_checkpoint(family, root / family) for family in REAL_FAMILIES}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    Image.new("RGB", (48, 48), (200, 30, 30)).save(root / "square.png")
    Image.new("RGB", (120, 60), (30, 30, 200)).save(root / "wide.png")
    return root


RECORDS = [
    {"image": "square.png", "question": "Is there a red circle?", "answer": "Yes"},
    {"image": "wide.png", "question": "How many squares are there?", "answer": "Two blue squares."},
    {"image": "square.png", "turns": [["What colour is the circle?", "Red."], ["Are you sure?", "Yes"]]},
]


def answer_tokens(processor, data, index: int) -> list[str]:
    labels = data.labels[index]
    return processor.tokenizer.convert_ids_to_tokens([t for t in labels.tolist() if t != IGNORE_INDEX])


def test_hub_layout_and_family_of_each_checkpoint(checkpoints: dict[str, Path]) -> None:
    expected = {"llava": ("LlavaForConditionalGeneration", "LlavaProcessor"),
                "llava_next": ("LlavaNextForConditionalGeneration", "LlavaNextProcessor"),
                "qwen2_vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor")}
    for family, folder in checkpoints.items():
        names = {path.name for path in folder.iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= names, names
        assert check_checkpoint(folder).name == family
        model, processor = load_vlm(folder, dtype="float32", device="cpu")
        assert (type(model).__name__, type(processor).__name__) == expected[family]
        assert family_of(model) is FAMILIES[family]
        assert 1e5 < sum(p.numel() for p in model.parameters()) < 5e6  # tiny, but every part is there


def test_prompts_come_from_each_family_chat_template(checkpoints: dict[str, Path]) -> None:
    from silkfire.train.data import prompt_text

    prompts = {family: prompt_text(load_vlm(folder, device="cpu")[1], "Is it red?")
               for family, folder in checkpoints.items()}
    assert prompts["llava"] == "USER: <image>\nIs it red? ASSISTANT:"
    assert prompts["llava_next"] == ("<|start_header_id|>user<|end_header_id|>\n\n<image>\nIs it red?<|eot_id|>"
                                     "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert prompts["qwen2_vl"].endswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Is it red?"
                                        "<|im_end|>\n<|im_start|>assistant\n")


def test_encoding_follows_each_family_processor(checkpoints: dict[str, Path], images: Path) -> None:
    from silkfire.train.data import prompt_text

    for family, folder in checkpoints.items():
        _, processor = load_vlm(folder, device="cpu")
        data = encode_sft_records(RECORDS, processor, images, progress=False)
        counts = [int((ids == processor.image_token_id).sum()) for ids in data.input_ids]
        # the encoded prompt is exactly what the processor makes of the rendered prompt and the image
        reference = processor(text=[prompt_text(processor, RECORDS[0]["question"])],
                              images=[Image.open(images / "square.png").convert("RGB")], return_tensors="pt")
        length = reference["input_ids"].shape[1]
        assert torch.equal(data.input_ids[0][:length], reference["input_ids"][0]), family
        if family == "llava":  # CLIP 336 px / patch 14: 576 tokens for every image (centre crop)
            assert counts == [576, 576, 576] and data.pixel_values.shape == (2, 3, 336, 336)
            assert not data.image_extras
        elif family == "llava_next":  # anyres: the wide image gets more tokens; image_sizes per image
            assert counts[0] == counts[2] < counts[1]
            assert data.image_extras["image_sizes"].tolist() == [[48, 48], [60, 120]]
        else:  # Qwen2-VL: flattened patches, 4 patches merged per token, grids per image
            grids = data.image_extras["image_grid_thw"]
            assert counts == [int(g.prod()) // 4 for g in grids[[0, 1, 0]]]
            assert [p.shape[0] for p in data.pixel_values] == grids.prod(-1).tolist()


def test_labels_are_the_answer_and_the_token_that_ends_the_turn(checkpoints: dict[str, Path], images: Path) -> None:
    """llava-hf's template ends an assistant turn with a space and no </s>: the target is `▁Yes </s>` (never
    `▁Yes ▁ </s>`); Qwen2-VL's ChatML: `Yes <|im_end|>` without the newline after it; Llama-3: the newline the
    template writes before the answer, the answer and <|eot_id|>."""
    expected = {"llava": (["▁Yes", "</s>"], ["</s>", "▁Yes", "</s>"]),
                "llava_next": (["Ċ", "Yes", "<|eot_id|>"], ["<|eot_id|>", "Ċ", "Yes", "<|eot_id|>"]),
                "qwen2_vl": (["Yes", "<|im_end|>"], ["<|im_end|>", "Yes", "<|im_end|>"])}
    for family, folder in checkpoints.items():
        _, processor = load_vlm(folder, device="cpu")
        data = encode_sft_records(RECORDS, processor, images, progress=False)
        single, two_turns = expected[family]
        assert answer_tokens(processor, data, 0) == single, family
        assert answer_tokens(processor, data, 2)[-4 if family == "llava_next" else -3:] == two_turns, family
        assert data.input_ids[0][-1] == data.labels[0][-1]  # the sequence ends with the turn's end, trained


def test_collated_batches_go_through_each_model(checkpoints: dict[str, Path], images: Path) -> None:
    for family, folder in checkpoints.items():
        model, processor = load_vlm(folder, device="cpu")
        data = encode_sft_records(RECORDS, processor, images, progress=False)
        batch = SFTCollator(processor.tokenizer.pad_token_id, processor.image_token_id)([data[i] for i in range(3)])
        if family == "qwen2_vl":
            assert batch["pixel_values"].dim() == 2 and batch["image_grid_thw"].shape == (3, 3)
            assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == processor.image_token_id).long())
        if family == "llava_next":
            assert batch["pixel_values"].dim() == 5 and batch["image_sizes"].shape == (3, 2)
        with torch.no_grad():
            loss = model(**batch).loss
        assert torch.isfinite(loss), family


def test_parts_and_lora_defaults_per_family(checkpoints: dict[str, Path]) -> None:
    from silkfire.train.lora import LoraOptions, apply_lora
    from silkfire.train.sft import freeze_parts

    for family, folder in checkpoints.items():
        model, _ = load_vlm(folder, device="cpu")
        tower = sum(p.numel() for p in part_parameters(model, "vision_tower"))
        projector = part_parameters(model, "projector")
        assert freeze_parts(model, ["vision_tower"]) == tower > 0
        assert all(p.requires_grad for p in projector) and projector
        wrapped, report = apply_lora(model, LoraOptions.from_mapping({"r": 2, "alpha": 4, "target_modules": "auto"}))
        leaves = {name.rsplit(".", 1)[-1] for name in report.adapted_modules}
        assert leaves == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}, family
        assert all(".language_model." in name for name in report.adapted_modules), family


def test_unsupported_architectures_and_incomplete_folders_are_refused(checkpoints: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    from silkfire.train.sft import freeze_parts

    remote = tmp_path / "qwen-vl-chat"
    shutil.copytree(checkpoints["llava"], remote)
    config = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**config, "model_type": "qwen"}))
    with pytest.raises(UnsupportedModel, match=r"model_type='qwen' is not supported; supported: .*LLaVA-1\.5.*"
                                               r"LLaVA-NeXT.*Qwen2-VL"):
        check_checkpoint(remote)

    bare = tmp_path / "no-processor"
    shutil.copytree(checkpoints["qwen2_vl"], bare)
    for name in ("processor_config.json", "preprocessor_config.json", "chat_template.jinja"):
        (bare / name).unlink()
    with pytest.raises(UnsupportedModel, match=r"without an image processor .*a chat template"):
        check_checkpoint(bare)

    class Other(torch.nn.Module):
        config = type("Config", (), {"model_type": "idefics3"})()

    with pytest.raises(UnsupportedModel, match="idefics3.*supported"):
        freeze_parts(Other(), [])


def test_the_tiny_world_model_is_a_llava_family_member(tmp_path: Path) -> None:
    model, _ = load_vlm(make_test_model(tmp_path / "tiny"), device="cpu")
    assert family_of(model).name == "llava"


def test_a_checkpoint_is_identified_by_its_content(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    folder = shutil.copytree(checkpoints["llava"], tmp_path / "copy")
    before = checkpoint_digest(folder)
    assert before == checkpoint_digest(checkpoints["llava"])  # content, not path
    make_real_checkpoint("llava", folder, seed=1)  # rebuilt in place: other weights, same file names
    assert checkpoint_digest(folder) != before


def test_dvc_hashes_the_checkpoint_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`base` depends on model.checkpoint_files: the folder itself for a local checkpoint, the HF cache folder for a
    hub name that is cached, the model code for a built model."""
    import yaml

    from silkfire.config import compose

    root = Path(__file__).resolve().parents[2]
    base_deps = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["base"]["deps"]
    assert "${model.checkpoint_files}" in base_deps
    assert compose([], root).model.checkpoint_files == "src/silkfire/models"
    local = tmp_path / "ckpt"
    local.mkdir()
    assert compose(["model=llava_1_5_7b", f"model.name_or_path={local}"], root).model.checkpoint_files == str(local)
    cache = tmp_path / "hub"
    (cache / "models--llava-hf--llava-1.5-7b-hf").mkdir(parents=True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    assert compose(["model=llava_1_5_7b"], root).model.checkpoint_files == str(
        cache / "models--llava-hf--llava-1.5-7b-hf")


def test_the_base_stage_records_family_and_content_and_refuses_the_unsupported(
        mlflow_root: Path, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from silkfire.config import compose
    from silkfire.stages.runner import run_stage

    folder = shutil.copytree(checkpoints["llava"], tmp_path / "checkpoint")
    cfg = compose(["model=llava_1_5_7b", f"model.name_or_path={folder}"], Path(__file__).resolve().parents[2])
    OmegaConf.save(cfg, mlflow_root / "params.yaml")
    source = mlflow_root / cfg.paths.base_model / "source.json"
    metrics = run_stage("base", mlflow_root)
    first = json.loads(source.read_text())
    assert metrics["family"] == first["family"] == "llava" and first["name_or_path"] == str(folder)
    assert first["digest"] == checkpoint_digest(folder) and metrics["parameters"] > 0
    make_real_checkpoint("llava", folder, seed=1)  # rebuilt in place: models/base changes, so do its dependants
    run_stage("base", mlflow_root)
    assert json.loads(source.read_text())["digest"] != first["digest"]
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "idefics3"}))
    with pytest.raises(UnsupportedModel, match="idefics3.*not supported; supported: LLaVA-1.5"):
        run_stage("base", mlflow_root)


def test_llava_1_5_pads_non_square_images_to_a_square_as_it_was_trained(checkpoints: dict[str, Path]) -> None:
    """llava-hf ships a centre-cropping CLIP processor; LLaVA-1.5 trained on images padded to a square of the mean
    colour. A wide red image keeps its full width (mean-colour bands above and below, which normalise to ~0);
    a square image gives the same pixels as the shipped processor."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor

    from silkfire.models.families import load_processor

    shipped = AutoProcessor.from_pretrained(checkpoints["llava"]).image_processor
    padding = load_processor(str(checkpoints["llava"])).image_processor
    assert type(shipped).__name__.startswith("CLIPImageProcessor") and padding.do_pad
    wide = Image.new("RGB", (672, 336), (255, 0, 0))
    cropped = shipped(images=[wide], return_tensors="pt")["pixel_values"][0]
    padded = padding(images=[wide], return_tensors="pt")["pixel_values"][0]
    size = padded.shape[-1]
    assert cropped[0, 0, 0] > 1.5 and padded[0, 0, 0].abs() < 0.05  # top row: red vs the mean-colour band
    assert padded[0, size // 2, 0] > 1.5 and padded[0, size // 2, size - 1] > 1.5  # the middle row: red edge to edge
    square = Image.new("RGB", (400, 400), (20, 120, 250))
    assert torch.equal(shipped(images=[square], return_tensors="pt")["pixel_values"],
                       padding(images=[square], return_tensors="pt")["pixel_values"])
