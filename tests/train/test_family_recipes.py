"""The published recipes' training settings run on a tiny checkpoint of their family with only size overrides:
experiment=silkie_7b's DPO (LoRA on every attention and MLP projection of the LLM, `target_modules: auto`) on
Qwen2-VL, experiment=fire_llava_8b's student SFT (LoRA on q/k/v, projector trained fully) on LLaVA-NeXT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from silkfire.config import compose
from silkfire.io import read_records, write_jsonl
from silkfire.models.testing import make_real_checkpoint, make_test_world

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_world(tmp_path_factory.mktemp("world") / "world", train_scenes=3, val_scenes=1, test_scenes=1)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def test_silkie_7b_dpo_recipe_on_a_tiny_qwen2_vl(tmp_path: Path, world: Path) -> None:
    from silkfire.train.dpo import DPOConfig, train_dpo

    checkpoint = make_real_checkpoint("qwen2_vl", tmp_path / "qwen2-vl")
    records = read_records(world / "train.jsonl")[:12]
    write_jsonl(tmp_path / "pairs.jsonl", [
        {"id": f"p{i}", "image": r["image"], "prompt": r["question"], "chosen": str(r["answer"]),
         "rejected": "There is a purple hexagon."} for i, r in enumerate(records)])
    cfg = compose(["experiment=silkie_7b", f"model.name_or_path={checkpoint}", "silkie.dpo.max_steps=2",
                   "silkie.dpo.batch_size=2", "silkie.dpo.grad_accum=1", "silkie.dpo.lora.r=4",
                   "silkie.dpo.eval_fraction=0.25", "silkie.dpo.ref_batch_size=8", "silkie.dpo.num_threads=1",
                   "silkie.dpo.progress=false"], ROOT)
    assert list(cfg.silkie.dpo.lora.target_modules) == ["auto"] and cfg.model.name_or_path == str(checkpoint)
    result = train_dpo(checkpoint, tmp_path / "pairs.jsonl", world, DPOConfig.from_mapping(cfg.silkie.dpo),
                       tmp_path / "dpo")
    assert result.metrics["global_step"] == 2 and result.metrics["dropped_long_pairs"] == 0
    adapter = json.loads((tmp_path / "dpo" / "adapter" / "adapter_config.json").read_text())
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "language_model"):
        assert name in adapter["target_modules"], name
    assert (result.model_dir / "model.safetensors").is_file()


def test_fire_llava_8b_student_recipe_on_a_tiny_llava_next(tmp_path: Path, world: Path) -> None:
    from omegaconf import OmegaConf

    from silkfire.train.sft import SFTConfig, train_sft

    checkpoint = make_real_checkpoint("llava_next", tmp_path / "llava-next")
    cfg = compose(["experiment=fire_llava_8b", f"model.name_or_path={checkpoint}", "fire.sft.student.max_steps=2",
                   "fire.sft.student.batch_size=2", "fire.sft.student.lora.r=4", "++fire.sft.student.max_samples=8",
                   "++fire.sft.student.max_eval_samples=4", "++fire.sft.student.progress=false",
                   "++fire.sft.student.num_threads=1"], ROOT)
    assert cfg.model.name_or_path == str(checkpoint)
    values = OmegaConf.to_container(cfg.fire.sft.student, resolve=True)
    config = SFTConfig.from_mapping(values, seed=0, turns_per_sample=1, families=None)
    result = train_sft(checkpoint, world / "train.jsonl", world / "val.jsonl", world, config, tmp_path / "student")
    assert result.metrics["global_step"] == 2
    assert result.metrics["lora_adapted_modules"] == 3 * 2  # q/k/v in each of the 2 decoder layers
    assert (result.model_dir / "model.safetensors").is_file()
