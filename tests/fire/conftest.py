"""Shared FIRE test fixtures: one tiny world and one tiny VLM per session (building the model takes ~10 s)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def fire_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from silkfire.models.testing import make_test_world

    return make_test_world(tmp_path_factory.mktemp("fire-world"), train_scenes=8, val_scenes=1, test_scenes=2)


@pytest.fixture(scope="session")
def fire_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny VLM with room for FIRE's long prompts (the world tokenizer spends ~480 tokens on a teacher prompt)."""
    from silkfire.models.testing import TEST_MODEL, make_test_model

    text = {**TEST_MODEL["text"], "max_position_embeddings": 2048}
    return make_test_model(tmp_path_factory.mktemp("fire-model"), text=text)
