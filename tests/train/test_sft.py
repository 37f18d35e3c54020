"""SFT with Trainer on a tiny model and world: loss goes down, checkpoints/history/model are written, resume."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch

from silkfire.models.testing import make_test_model, make_test_world
from silkfire.train.sft import HISTORY_FIELDS, SFTConfig, train_sft

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_world(tmp_path_factory.mktemp("world"), train_scenes=2, val_scenes=1, test_scenes=1)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_model(tmp_path_factory.mktemp("base") / "model")


def _config(**overrides) -> SFTConfig:
    values = dict(learning_rate=3e-3, max_steps=12, batch_size=8, warmup_ratio=0.0, logging_steps=1,
                  save_steps=4, save_total_limit=2, eval_steps=6, eval_batch_size=16, max_eval_samples=16,
                  num_threads=2, families=["mme"], max_samples=16, progress=False, lr_scheduler="constant",
                  answer_style="plain", freeze=[])  # bare Yes/No targets overfit fast; the whole model trains
    values.update(overrides)
    return SFTConfig.from_mapping(values)


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def test_few_steps_lower_the_loss_and_write_outputs(world: Path, base: Path, tmp_path: Path):
    out = tmp_path / "sft"
    result = train_sft(base, world / "train.jsonl", world / "val.jsonl", world, _config(), out)

    losses = [row["loss"] for row in result.history if "loss" in row]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3  # overfits 16 yes/no answers quickly
    assert [row["step"] for row in result.history if "loss" in row] == list(range(1, 13))
    assert any("eval_loss" in row for row in result.history if row["step"] == 6)
    assert result.history[-1]["step"] == 12 and "eval_loss" in result.history[-1]

    # model + processor saved as safetensors, reloadable
    assert result.model_dir == out / "model"
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "processor_config.json").is_file()
    # no pickles next to the weights (a checkpoint's optimizer/scheduler/RNG states are torch-saved tensors)
    assert not list(out.rglob("*.bin")) and not list((out / "model").glob("*.pt*"))
    # checkpoints every 4 steps, only the last 2 kept
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-12", "checkpoint-8",
                                                                       "fingerprint.json"]  # what they train on
    assert result.metrics["resumed_from_step"] == 0 and result.metrics["steps_run"] == 12
    # history.csv for DVC plots
    with (out / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0].keys()) == HISTORY_FIELDS and len(rows) == len(result.history)
    assert float(rows[-1]["eval_loss"]) == pytest.approx(result.metrics["eval_loss"])
    for key in ("train_loss", "eval_loss", "samples_per_second", "train_seconds"):
        assert result.metrics[key] > 0
    assert (out / "metrics.json").is_file()


@pytest.mark.parametrize("curriculum", [{}, {"families": None, "curriculum_steps": 3}, {"group_by_length": True}],
                         ids=["plain", "curriculum", "length-grouped"])
def test_resume_from_last_checkpoint_matches_an_uninterrupted_run(world: Path, base: Path, tmp_path: Path,
                                                                  curriculum: dict):
    config = _config(max_steps=8, save_steps=4, eval_steps=0, save_total_limit=3, **curriculum)
    straight = train_sft(base, world / "train.jsonl", world / "val.jsonl", world, config, tmp_path / "a")

    # Simulate a crash after step 4: drop everything later than checkpoint-4, then resume.
    interrupted = tmp_path / "b"
    shutil.copytree(tmp_path / "a", interrupted)
    shutil.rmtree(interrupted / "checkpoints" / "checkpoint-8")
    shutil.rmtree(interrupted / "model")
    resumed = train_sft(base, world / "train.jsonl", world / "val.jsonl", world,
                        _config(max_steps=8, save_steps=4, eval_steps=0, save_total_limit=3, resume=True,
                                **curriculum), interrupted)
    # the history covers the steps before the resume too (Trainer saves its log history in checkpoints)
    assert [row["step"] for row in resumed.history if "loss" in row] == list(range(1, 9))
    assert [row["loss"] for row in resumed.history[:4]] == [row["loss"] for row in straight.history[:4]]
    a, b = _weights(straight.model_dir), _weights(resumed.model_dir)
    assert all(torch.allclose(a[key], b[key], atol=1e-5) for key in a)


def test_resume_without_checkpoint_starts_fresh(world: Path, base: Path, tmp_path: Path):
    result = train_sft(base, world / "train.jsonl", world / "val.jsonl", world,
                       _config(max_steps=2, resume=True, eval_steps=0), tmp_path / "fresh")
    assert [row["step"] for row in result.history if "loss" in row] == [1, 2]


def test_same_seed_same_model(world: Path, base: Path, tmp_path: Path):
    config = _config(max_steps=3, eval_steps=0, save_steps=100)
    one = train_sft(base, world / "train.jsonl", world / "val.jsonl", world, config, tmp_path / "one")
    two = train_sft(base, world / "train.jsonl", world / "val.jsonl", world, config, tmp_path / "two")
    a, b = _weights(one.model_dir), _weights(two.model_dir)
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_callbacks_follow_the_one_training_protocol(world: Path, base: Path, tmp_path: Path):
    """SFT calls the same callback(event, step, values) functions as DPO (silkfire.train.callbacks): its rows under
    the curve names, a "step" per optimizer step, a "save" naming the checkpoint folder; raising stops training
    with the checkpoints written so far."""
    from silkfire.train.callbacks import TrainingStopped

    seen: list[tuple[str, int, dict]] = []
    train_sft(base, world / "train.jsonl", world / "val.jsonl", world,
              _config(max_steps=2, eval_steps=0, save_steps=1), tmp_path / "cb",
              callbacks=[lambda event, step, values: seen.append((event, step, dict(values)))])
    logs = [values for event, _, values in seen if event == "log"]
    assert any("train/loss" in values for values in logs) and any("eval/loss" in values for values in logs)
    assert [step for event, step, _ in seen if event == "step"] == [1, 2]
    saves = [(step, values["checkpoint"]) for event, step, values in seen if event == "save"]
    assert [step for step, _ in saves] == [1, 2] and saves[0][1].endswith("checkpoints/checkpoint-1")

    def stop_at_3(event: str, step: int, values: dict) -> None:
        if event == "step" and step == 3:
            raise TrainingStopped("killed")

    with pytest.raises(TrainingStopped):
        train_sft(base, world / "train.jsonl", world / "val.jsonl", world, _config(max_steps=6, save_steps=2),
                  tmp_path / "stopped", callbacks=[stop_at_3])
    assert (tmp_path / "stopped" / "checkpoints" / "checkpoint-2").is_dir()
    assert not (tmp_path / "stopped" / "model").exists()


def test_config_from_mapping_and_conf_file():
    from omegaconf import OmegaConf

    # the file may interpolate root keys (${seed}, ${runtime.dtype}): resolve it inside a minimal root config
    root = OmegaConf.create({"seed": 7, "runtime": {"dtype": "float32", "device": "cpu", "gradient_checkpointing": False},
                             "train": OmegaConf.load(PROJECT_ROOT / "conf" / "train" / "sft.yaml")})
    cfg = SFTConfig.from_mapping(root.train)
    assert cfg.seed == 7 and cfg.num_threads >= 1 and cfg.dtype == "float32"
    assert SFTConfig.from_mapping(root.train, seed=3).seed == 3
    with pytest.raises(ValueError, match="unknown key.*'lr'"):
        SFTConfig.from_mapping({"lr": 0.1})
    assert SFTConfig.from_mapping({"families": ["mme", "open"]}).families == ("mme", "open")


def test_frozen_vision_tower_stays_unchanged(world: Path, base: Path, tmp_path: Path):
    result = train_sft(base, world / "train.jsonl", world / "val.jsonl", world,
                       _config(max_steps=3, eval_steps=0, save_steps=100, freeze=["vision_tower"]),
                       tmp_path / "frozen")
    before, after = _weights(base), _weights(result.model_dir)
    vision = [key for key in before if "vision_tower" in key]
    assert vision and all(torch.equal(before[key], after[key]) for key in vision)
    assert any(not torch.equal(before[key], after[key]) for key in before if "language_model" in key)
    assert result.metrics["frozen_parameters"] > 0
    with pytest.raises(ValueError, match="unknown part"):
        SFTConfig.from_mapping({"freeze": ["eyes"]})


def test_build_train_save_reload_generate_path(world: Path, tmp_path: Path):
    """The whole model path on the tiny sizes: build -> SFT -> save -> load_vlm -> batched greedy answers."""
    from silkfire.eval.answers import generate_answers
    from silkfire.io import read_records
    from silkfire.models.loading import load_vlm

    base_dir = make_test_model(tmp_path / "base", seed=1)
    result = train_sft(base_dir, world / "train.jsonl", world / "val.jsonl", world,
                       _config(max_steps=25, eval_steps=0, save_steps=100, max_samples=None,
                               turns_per_sample=4, batch_size=8), tmp_path / "sft")
    model, processor = load_vlm(result.model_dir)
    records = read_records(world / "mme.jsonl")[:8]
    answers = generate_answers(model, processor, records, world, batch_size=4, max_new_tokens=3, progress=False)
    # 25 steps on yes/no questions are enough to learn the answer format
    assert len(answers) == 8 and all(answer in ("Yes", "No") for answer in answers)


def test_a_curriculum_trains_its_families_first_then_everything(world: Path) -> None:
    from silkfire.io import read_records
    from silkfire.train.data import PlannedOrder, curriculum_order, select_records
    from silkfire.train.sft import _planned

    records = select_records(read_records(world / "train.jsonl"), None, None, 0)
    config = _config(families=None, max_samples=None, max_steps=10, batch_size=4, curriculum_steps=3)
    encoded = list(range(len(records)))  # stands in for the encoded samples (one per record at turns_per_sample 1)
    planned, steps = _planned(encoded, records, config)
    assert isinstance(planned, PlannedOrder) and steps == 10 and len(planned) == 40
    head, rest = planned.order[:12], planned.order[12:]
    assert all(records[i]["family"] in ("open", "probe") for i in head)
    assert {records[i]["family"] for i in rest} == {"open", "probe", "mme"}
    assert len(set(rest[:len(records)])) == min(len(records), len(rest))  # a full pass before any repeat
    assert _planned(encoded, records, config)[0].order == planned.order  # seeded: a resumed run plans the same
    assert _planned(encoded, records, _config(families=None, curriculum_steps=0, max_steps=10))[0] is encoded
    with pytest.raises(ValueError, match="curriculum_families"):
        curriculum_order([{"mme"}, {"mme", "open"}], ["open"], 4, 8, 0)  # no sample has only the wanted family


def test_length_grouped_batches_cover_every_sample_each_pass_with_less_padding(world: Path, base: Path) -> None:
    """train.group_by_length: a planned order of seeded passes, each sample once per pass, batches of similar
    lengths (HF's own group_by_length groups nothing for a LLaVA processor: it reads pixel_values)."""
    from silkfire.io import read_records
    from silkfire.models.loading import load_vlm
    from silkfire.train.data import PlannedOrder, encode_sft_records, length_grouped_passes, select_records
    from silkfire.train.sft import _planned

    _, processor = load_vlm(base)
    records = select_records(read_records(world / "train.jsonl"), None, None, 0)
    encoded = encode_sft_records(records, processor, world, progress=False)
    config = _config(families=None, max_samples=None, max_steps=12, batch_size=4, group_by_length=True)
    planned, steps = _planned(encoded, records, config)
    assert isinstance(planned, PlannedOrder) and steps == 12 and len(planned) == 48
    n = len(encoded)
    assert sorted(planned.order[:n]) == list(range(n))  # a full pass before any repeat
    assert _planned(encoded, records, config)[0].order == planned.order  # seeded: a resumed run plans the same
    lengths = [len(ids) for ids in encoded.input_ids]

    def padding(order: list[int]) -> int:
        batches = [order[i:i + 4] for i in range(0, len(order) - len(order) % 4, 4)]
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    shuffled = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    assert padding(length_grouped_passes(lengths, 4, n, 0)) < padding(shuffled)
    with pytest.raises(ValueError, match="cannot be combined"):
        _config(group_by_length=True, curriculum_steps=3)


def test_max_steps_zero_means_epochs_as_in_dpo(world: Path, base: Path, tmp_path: Path):
    """One convention for every trainer: max_steps <= 0 lets num_epochs decide (16 samples / 8 = 2 steps)."""
    result = train_sft(base, world / "train.jsonl", world / "val.jsonl", world,
                       _config(max_steps=0, num_epochs=1.0, eval_steps=0, save_steps=0), tmp_path / "epochs")
    assert result.metrics["global_step"] == 2
