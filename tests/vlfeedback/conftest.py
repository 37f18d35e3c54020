"""A small generated shapes world shared by the judge tests (generated once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from silkfire.world import WorldConfig, generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(WorldConfig(train_scenes=30, val_scenes=2, test_scenes=24), out, seed=3, progress=False)
    return out
