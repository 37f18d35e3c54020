"""Fan-out over shards through Prefect task runners: the same annotations from threads and from a local Dask
cluster (worker processes) as from one process, in input order."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from silkfire.fanout import FanoutConfig, fan_out, make_task_runner, split
from silkfire.vlfeedback.judges import annotate_shard


def test_split_keeps_order_and_balances() -> None:
    assert split(list(range(10)), 3) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert split([1, 2], 5) == [[1], [2]]  # never an empty shard
    assert split([], 4) == [[]]
    assert [x for piece in split(list(range(101)), 7) for x in piece] == list(range(101))


def test_config_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="not one of"):
        FanoutConfig(runner="spark")
    with pytest.raises(ValueError, match="shards"):
        FanoutConfig(runner="thread", shards=0)
    with pytest.raises(ValueError, match="address only applies"):
        FanoutConfig(runner="thread", address="tcp://x:8786")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['nodes'\]"):
        FanoutConfig.from_mapping({"runner": "dask", "nodes": 3})


def test_ray_runner_names_the_install_when_missing() -> None:
    if importlib.util.find_spec("prefect_ray") is not None:
        pytest.skip("prefect-ray is installed here")
    with pytest.raises(ImportError, match=r"pip install prefect-ray==0\.6\.0"):
        make_task_runner(FanoutConfig(runner="ray"))


def _double(piece: list[int], *, offset: int) -> list[int]:
    return [2 * x + offset for x in piece]


def _pids(piece: list[int]) -> list[int]:
    import os

    return [os.getpid() for _ in piece]


def _drop_one(piece: list[int]) -> list[int]:
    return piece[1:]


def test_runner_none_calls_in_process_and_checks_lengths() -> None:
    assert fan_out(_double, [1, 2, 3], FanoutConfig(shards=3), offset=1) == [3, 5, 7]
    with pytest.raises(ValueError, match="one result per input record"):
        fan_out(_drop_one, [1, 2, 3], FanoutConfig())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from silkfire.world import WorldConfig, generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(WorldConfig(train_scenes=12, val_scenes=2, test_scenes=2), out, seed=5, progress=False)
    return out


def _records(world: Path) -> list[dict]:
    from silkfire.vlfeedback.judges import make_judge
    from silkfire.policies.instructions import world_instructions
    from silkfire.policies.scripted import PROFILES, ScriptedPolicy

    config = make_judge({"kind": "oracle"}, world_dir=world).config  # type: ignore[attr-defined]
    policies = [ScriptedPolicy(profile, config) for profile in PROFILES]
    records = []
    for index, instruction in enumerate(world_instructions(world, max_instructions=40)):
        chosen = [policies[(index + k) % len(policies)] for k in range(3)]
        records.append({"id": instruction.id, "prompt": instruction.prompt, "models": [p.name for p in chosen],
                        "img_path": instruction.image,
                        "completions": [{"model": p.name, "response": p.answer(instruction, 0), "annotations": None}
                                        for p in chosen]})
    return records


# Slow: in a fresh clone's CI run the local Dask cluster's worker processes vanished and the flow waited on its
# futures forever (seen once, 2026-11-26; it passes in the working tree in ~18 s). Run with `make test-all`.
@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_annotation_fans_out_over_threads_and_a_dask_cluster(prefect_server: None, world: Path) -> None:
    records = _records(world)
    kwargs = {"judge": {"kind": "oracle"}, "world_dir": str(world), "root": str(world), "image_root": str(world)}
    single = fan_out(annotate_shard, records, FanoutConfig(), **kwargs)
    assert [r["id"] for r in single] == [r["id"] for r in records]
    assert all(c["annotations"] for r in single for c in r["completions"])

    threads = fan_out(annotate_shard, records, FanoutConfig(runner="thread", shards=4, workers=2), **kwargs)
    assert threads == single
    # two Dask worker processes: shards, judge config and results cross process boundaries (pickled)
    dask_config = FanoutConfig(runner="dask", shards=3, workers=2)
    dask = fan_out(annotate_shard, records, dask_config, **kwargs)
    assert dask == single
    # the workers cannot import this test module: ship _pids by value, as a notebook's function would travel
    cloudpickle = pytest.importorskip("cloudpickle")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        pids = fan_out(_pids, list(range(6)), dask_config)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert os.getpid() not in pids  # it really ran in the cluster's worker processes
