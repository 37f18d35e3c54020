"""mDPO as a loss option (issue 18; arXiv 2406.11839): the formula, the corrupted image, a run that learns the
image-conditional preference, a cached reference pass keyed apart from plain DPO's."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from silkfire.io import read_records, write_jsonl
from silkfire.train.dpo import REFERENCE_FILE, DPOConfig, ImageCorruptor, dpo_loss, mdpo_loss, train_dpo

from .test_dpo import _config, base, pairs_file, world  # noqa: F401 -- test_dpo's module fixtures, shared


def test_mdpo_adds_the_image_conditional_and_anchor_terms_to_dpo() -> None:
    chosen, rejected, corrupt = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0]), torch.tensor([-6.0, -4.0])
    ref_chosen, ref_rejected, ref_corrupt = torch.tensor([-3.5, -5.0]), torch.tensor([-3.0, -2.5]), \
        torch.tensor([-5.0, -5.0])
    losses, chosen_r, rejected_r, corrupt_r = mdpo_loss(chosen, rejected, corrupt, ref_chosen, ref_rejected,
                                                        ref_corrupt, beta=0.5, anchor=0.1)
    dpo, _, _ = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.5)
    conditional = -torch.nn.functional.logsigmoid(0.5 * ((chosen - ref_chosen) - (corrupt - ref_corrupt)))
    anchored = -torch.nn.functional.logsigmoid(0.5 * (chosen - ref_chosen) - 0.1)
    assert torch.allclose(losses, dpo + conditional + anchored)
    assert torch.allclose(corrupt_r, 0.5 * (corrupt - ref_corrupt))
    assert torch.allclose(chosen_r, 0.5 * (chosen - ref_chosen))
    # at the start (policy = reference) each term is log 2
    same = torch.tensor([-2.0])
    start, *_ = mdpo_loss(same, same, same, same, same, same, beta=0.1, anchor=0.0)
    assert float(start) == pytest.approx(3 * math.log(2))
    with pytest.raises(ValueError, match="loss must be one of"):
        DPOConfig(loss="ipo")
    with pytest.raises(ValueError, match="mdpo_keep"):
        DPOConfig(loss="mdpo", mdpo_keep=0.0)


def test_the_corrupted_image_is_a_seeded_small_crop_at_the_original_size(tmp_path: Path) -> None:
    image = Image.new("RGB", (48, 48))
    image.putdata([(x * 5, y * 5, 0) for y in range(48) for x in range(48)])  # red = 5x, green = 5y
    corruptor = ImageCorruptor(processor=None, image_root=tmp_path, keep=0.2)
    one, again, other = corruptor.crop(image, "pair-1"), corruptor.crop(image, "pair-1"), corruptor.crop(image, "p-2")
    assert one.size == image.size
    assert one.tobytes() == again.tobytes()  # the same pair gets the same m' in the reference pass and every epoch
    assert one.tobytes() != image.tobytes() and other.tobytes() != one.tobytes()
    crops = [corruptor.crop(image, f"k{i}") for i in range(20)]
    assert len({c.tobytes() for c in crops}) == 20
    # at most 20% of the area: a side of at most ~45% (21 of 48 px), so each channel spans at most ~22 * 5 levels
    for crop in crops:
        (red_low, red_high), (green_low, green_high), _ = (band.getextrema() for band in crop.split())
        assert red_high - red_low <= 115 and green_high - green_low <= 115


def test_mdpo_trains_the_chosen_answer_to_depend_on_the_real_image(
        world: Path, base: Path, pairs_file: Path, tmp_path: Path) -> None:  # noqa: F811
    small = tmp_path / "small.jsonl"
    write_jsonl(small, read_records(pairs_file)[:8])
    config = _config(batch_size=8, max_steps=8, eval_fraction=0.0, save_steps=0, learning_rate=1e-3, loss="mdpo")
    result = train_dpo(base, small, world, config, tmp_path / "mdpo")
    history = result.history
    assert history[0]["dpo_loss"] == pytest.approx(3 * math.log(2), abs=1e-3)  # three terms, each log 2 at the start
    assert history[-1]["dpo_loss"] < 0.9 * history[0]["dpo_loss"]
    assert history[-1]["image_reward_accuracy"] >= 0.75  # the real image now makes the chosen answer likelier
    assert "image_reward_accuracy" in result.metrics
    from safetensors.torch import load_file

    reference = load_file(tmp_path / "mdpo" / REFERENCE_FILE)
    assert reference["corrupt"].shape == reference["chosen"].shape
    assert not torch.equal(reference["corrupt"], reference["chosen"])  # the corrupted image changes the log-probs
    # a plain DPO run in the same folder does not reuse the mdpo reference pass (keyed apart), and stays plain
    plain = train_dpo(base, small, world, _config(batch_size=8, max_steps=2, eval_fraction=0.0, save_steps=0,
                                                   resume=False), tmp_path / "mdpo")
    assert "corrupt" not in load_file(tmp_path / "mdpo" / REFERENCE_FILE)
    assert "image_reward_accuracy" not in plain.history[-1]
