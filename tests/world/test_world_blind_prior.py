"""The MME-style questions carry no text-only shortcut: a model that never sees the image scores ~chance.

The strongest blind predictor of a yes/no question is the majority answer of its exact text. It is estimated on
one half of many sampled scenes and scored on the other half, per category: it must stay near 50%. (Before the
fix, count and numerical_calculation "No" questions used a wrong number drawn uniformly, and the number alone
predicted the answer for about 3 in 4 questions.)
"""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from silkfire.world import WorldConfig
from silkfire.world.questions import MME_BUILDERS, scene_questions
from silkfire.world.scene import sample_world_scenes

SCENES = 8000
# Exact symmetry gives 50%; the rare fallbacks (about 5% of count pairs, scenes with one object of each shape)
# and the finite sample add a little. A text shortcut like the old count one gives ~0.75.
MAX_BLIND_ACCURACY = 0.55


def _questions(scenes, config: WorldConfig) -> dict[str, list[tuple[str, str]]]:
    by_category: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for scene in scenes:
        mme, _, _ = scene_questions(scene, config, seed=0)
        for qa in mme:
            by_category[qa.category].append((qa.question, qa.answer))
    return by_category


def blind_accuracy(fit: list[tuple[str, str]], score: list[tuple[str, str]]) -> float:
    """Accuracy on ``score`` of the per-question-text majority answer learnt on ``fit`` (unseen text: 'Yes')."""
    seen: dict[str, Counter[str]] = defaultdict(Counter)
    for question, answer in fit:
        seen[question][answer] += 1
    hits = sum((seen[q].most_common(1)[0][0] if q in seen else "Yes") == answer for q, answer in score)
    return hits / len(score)


@pytest.fixture(scope="module")
def halves() -> tuple[dict, dict]:
    config = WorldConfig(train_scenes=SCENES, val_scenes=0, test_scenes=1)
    scenes = sample_world_scenes(config, seed=0)[0]["train"]  # training scenes: drawn from the prior, repeats allowed
    half = len(scenes) // 2
    return _questions(scenes[:half], config), _questions(scenes[half:], config)


@pytest.mark.parametrize("category", list(MME_BUILDERS))
def test_question_text_alone_predicts_about_half(halves: tuple[dict, dict], category: str) -> None:
    fit, score = halves
    accuracy = blind_accuracy(fit[category], score[category])
    assert accuracy <= MAX_BLIND_ACCURACY, f"{category}: the question text alone gives {accuracy:.3f}"
    # and the other way round (both halves are honest held-out sets for each other)
    assert blind_accuracy(score[category], fit[category]) <= MAX_BLIND_ACCURACY


def test_the_check_catches_a_shortcut() -> None:
    """The same estimator on a world with a shortcut (the answer readable from the text) finds it."""
    leaky = [(f"Are there exactly {n} circles?", "Yes" if n == 1 else "No") for n in (1, 2, 3, 4) for _ in range(50)]
    assert blind_accuracy(leaky[::2], leaky[1::2]) == 1.0
