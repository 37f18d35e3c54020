"""DPO on a tiny model and world: the loss formula, the reference pass, a killed run resumed to the same end, LoRA."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from silkfire.io import read_records, write_jsonl
from silkfire.models.testing import make_test_model, make_test_world
from silkfire.policies.instructions import world_instructions
from silkfire.policies.scripted import ScriptedPolicy
from silkfire.train.dpo import (
    DPOConfig,
    TrainingStopped,
    checkpoint_dirs,
    dpo_loss,
    encode_pairs,
    split_pairs,
    train_dpo,
)
from silkfire.world.config import WorldConfig


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_world(tmp_path_factory.mktemp("world"), train_scenes=3, val_scenes=1, test_scenes=1)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_model(tmp_path_factory.mktemp("base") / "model")


@pytest.fixture(scope="module")
def pairs_file(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Correct (chosen) vs hallucinating/miscounting (rejected) answers where they differ."""
    instructions = world_instructions(world, families=["open", "probe", "mme"])
    good = ScriptedPolicy("correct", WorldConfig()).respond(instructions, world, 0)
    pairs = []
    for bad_profile in ("hallucinate", "miscount", "wrong_color"):
        bad = ScriptedPolicy(bad_profile, WorldConfig()).respond(instructions, world, 0)
        for instruction, chosen, rejected in zip(instructions, good, bad):
            if chosen != rejected:
                pairs.append({"id": f"{instruction.id}/{bad_profile}", "source_id": instruction.id,
                              "prompt": instruction.prompt, "img_path": instruction.image, "chosen": chosen,
                              "rejected": rejected, "chosen_score": 5.0, "rejected_score": 2.0})
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    write_jsonl(path, pairs)
    assert len(pairs) >= 24
    return path


def _config(**overrides) -> DPOConfig:
    values = dict(beta=0.1, rpo_alpha=0.0, learning_rate=2e-3, max_steps=6, batch_size=4, warmup_ratio=0.0,
                  lr_scheduler="constant", logging_steps=1, save_steps=2, save_total_limit=3, eval_fraction=0.2,
                  ref_batch_size=16, num_threads=1, progress=False, seed=0,
                  lora={"enabled": False}, eval_steps=0)  # full fine-tuning; held-out eval at the end only
    values.update(overrides)
    return DPOConfig.from_mapping(values)


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def test_dpo_loss_is_the_sigmoid_formula() -> None:
    chosen, rejected = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    ref_chosen, ref_rejected = torch.tensor([-3.5, -5.0]), torch.tensor([-3.0, -2.5])
    losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.5)
    z = 0.5 * ((chosen - ref_chosen) - (rejected - ref_rejected))
    assert torch.allclose(losses, -torch.log(torch.sigmoid(z)))
    assert torch.allclose(chosen_rewards, 0.5 * (chosen - ref_chosen))
    assert math.isclose(float(losses[0]), -math.log(1 / (1 + math.exp(-0.75))), rel_tol=1e-6)


def test_pairs_encode_answer_labels_only_and_split_by_prompt(world: Path, base: Path, pairs_file: Path) -> None:
    from silkfire.models.loading import load_vlm

    _, processor = load_vlm(base)
    pairs = read_records(pairs_file)
    data, kept = encode_pairs(pairs, processor, world, max_length=256, progress=False)
    assert kept == list(range(len(pairs))) and len(data) == len(pairs)
    first = pairs[0]
    answer = processor.tokenizer.decode([t for t in data.chosen_labels[0].tolist() if t != -100],
                                        skip_special_tokens=True)
    assert answer.strip() == first["chosen"].strip()
    # the prompt (image tokens included) is shared by both sides of a pair
    prompt_len = int((data.chosen_labels[0] == -100).sum())
    assert torch.equal(data.chosen_ids[0][:prompt_len], data.rejected_ids[0][:prompt_len])
    # too long -> dropped
    short, kept_short = encode_pairs(pairs, processor, world, max_length=prompt_len + 2, progress=False)
    assert len(short) == len(kept_short) < len(pairs)
    train, held = split_pairs(pairs, 0.25, seed=0)
    assert sorted(train + held) == list(range(len(pairs))) and held
    assert not {pairs[i]["source_id"] for i in train} & {pairs[i]["source_id"] for i in held}


def test_bad_pair_names_record_and_field(world: Path, base: Path, tmp_path: Path) -> None:
    from silkfire.models.loading import load_vlm

    _, processor = load_vlm(base)
    bad = [{"id": "p0", "prompt": "Q?", "img_path": "images/x.png", "chosen": "a", "rejected": ""}]
    with pytest.raises(ValueError, match=r"pairs\.jsonl: pair 0 \(id 'p0'\): field 'rejected'"):
        encode_pairs(bad, processor, world, max_length=256, source="pairs.jsonl")


def test_training_raises_preference_and_a_killed_run_resumes_to_the_same_end(
        world: Path, base: Path, pairs_file: Path, tmp_path: Path) -> None:
    logged: list[tuple[int, dict]] = []
    full = train_dpo(base, pairs_file, world, _config(), tmp_path / "full",
                     callbacks=[lambda event, step, values: logged.append((step, values)) if event == "log" else None])
    history = full.history
    assert [row["step"] for row in history] == [1, 2, 3, 4, 5, 6] and [s for s, _ in logged] == [1, 2, 3, 4, 5, 6]
    # before the first update the policy is the reference: zero implicit rewards
    assert abs(history[0]["reward_margin"]) < 1e-4 and abs(history[0]["chosen_reward"]) < 1e-4
    assert "eval_reward_accuracy" in history[-1] and full.metrics["eval_pairs"] > 0
    for key in ("loss", "reward_accuracy", "reward_margin", "chosen_logp", "rejected_logp", "pairs_per_second"):
        assert math.isfinite(full.metrics[key]), key
    out = tmp_path / "full"
    assert (out / "model" / "model.safetensors").is_file() and (out / "reference_logps.safetensors").is_file()
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl"))
    with (out / "history.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 6

    # a run killed after step 3 (checkpoint at 2), then resumed, ends exactly like the uninterrupted one
    def kill_at_3(event: str, step: int, values: dict) -> None:
        if event == "step" and step == 3:
            raise TrainingStopped("killed")

    events: list[tuple[str, int, dict]] = []
    with pytest.raises(TrainingStopped):
        train_dpo(base, pairs_file, world, _config(), tmp_path / "resumed",
                  callbacks=[lambda *event: events.append(event), kill_at_3])
    assert [p.name for p in checkpoint_dirs(tmp_path / "resumed" / "checkpoints")] == ["checkpoint-2"]
    # the protocol SFT follows too (silkfire.train.callbacks): log rows, one "step" per step, "save" after a checkpoint
    assert [(event, step) for event, step, _ in events if event != "log"] == [
        ("step", 1), ("save", 2), ("step", 2), ("step", 3)]
    saved = next(values for event, _, values in events if event == "save")
    assert saved["checkpoint"].endswith("checkpoints/checkpoint-2")
    resumed = train_dpo(base, pairs_file, world, _config(resume=True), tmp_path / "resumed")
    assert resumed.metrics["resumed_from_step"] == 2
    assert resumed.history == history
    for key in ("loss", "reward_accuracy", "reward_margin", "eval_loss", "eval_reward_accuracy"):
        assert resumed.metrics[key] == full.metrics[key], key
    ours, theirs = _weights(out / "model"), _weights(tmp_path / "resumed" / "model")
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)

    # a checkpoint of other settings is never silently continued
    with pytest.raises(TrainingStopped):
        train_dpo(base, pairs_file, world, _config(), tmp_path / "other", callbacks=[kill_at_3])
    with pytest.raises(ValueError, match=r"cannot resume .*beta 0.1 -> 0.2"):
        train_dpo(base, pairs_file, world, _config(resume=True, beta=0.2), tmp_path / "other")


def test_answer_logps_equal_the_full_sequence_computation(world: Path, base: Path, pairs_file: Path) -> None:
    """sequence_logps keeps logits at answer positions only: same sums as log-softmax over every position."""
    from silkfire.models.loading import load_vlm
    from silkfire.train.dpo import collate_pairs, sequence_logps

    model, processor = load_vlm(base)
    model.eval()
    data, _ = encode_pairs(read_records(pairs_file)[:6], processor, world, max_length=256, progress=False)
    batch = collate_pairs(data, range(6), processor.tokenizer.pad_token_id)
    with torch.no_grad():
        sums, counts = sequence_logps(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       pixel_values=batch["pixel_values"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    full = logits.log_softmax(-1).gather(2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    assert torch.equal(counts, mask.sum(-1)) and bool((counts > 0).all())
    assert torch.allclose(sums, (full * mask).sum(-1), atol=1e-5)


def test_a_fixed_batch_is_learned(world: Path, base: Path, pairs_file: Path, tmp_path: Path) -> None:
    """Every step sees the same 8 pairs: the DPO loss must fall and the chosen side must win."""
    small = tmp_path / "small.jsonl"
    write_jsonl(small, read_records(pairs_file)[:8])
    config = _config(batch_size=8, max_steps=8, eval_fraction=0.0, save_steps=0, learning_rate=1e-3)
    history = train_dpo(base, small, world, config, tmp_path / "fixed").history
    assert history[0]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert history[-1]["dpo_loss"] < 0.9 * math.log(2)
    assert history[-1]["reward_margin"] > 0 and history[-1]["reward_accuracy"] >= 0.75


def test_lora_trains_adapters_only_and_saves_a_merged_model(
        world: Path, base: Path, pairs_file: Path, tmp_path: Path) -> None:
    from silkfire.models.loading import load_vlm

    config = _config(max_steps=3, save_steps=0, rpo_alpha=1.0,
                     lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "within": "language_model"})
    result = train_dpo(base, pairs_file, world, config, tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter" / "adapter_model.safetensors").is_file()
    base_weights = _weights(base)
    merged = _weights(result.model_dir)
    changed = [name for name in merged if not torch.equal(merged[name], base_weights[name])]
    assert changed and all("language_model" in name for name in changed)
    assert all("vision" not in name for name in changed)
    model, _ = load_vlm(result.model_dir)  # a plain model folder again
    assert result.metrics["trainable_parameters"] < sum(p.numel() for p in model.parameters()) / 5


def test_eval_steps_give_a_held_out_curve_without_changing_training(
        world: Path, base: Path, pairs_file: Path, tmp_path: Path) -> None:
    curve = train_dpo(base, pairs_file, world, _config(max_steps=4, eval_steps=2), tmp_path / "curve")
    plain = train_dpo(base, pairs_file, world, _config(max_steps=4, eval_steps=0), tmp_path / "plain")
    assert [row["step"] for row in curve.history if "eval_loss" in row] == [2, 4]
    assert [row["step"] for row in plain.history if "eval_loss" in row] == [4]
    ours, theirs = _weights(tmp_path / "curve" / "model"), _weights(tmp_path / "plain" / "model")
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)  # evaluating never moves the weights
    assert curve.history[-1]["eval_loss"] == plain.history[-1]["eval_loss"]
