"""Fan record-level work (sampling, annotation) out over shards: one Prefect task per shard, on a task runner
that is local threads or processes here and a Dask or Ray cluster on real infrastructure.

    config = FanoutConfig(runner="dask", shards=32, address="tcp://scheduler:8786")
    annotated = fan_out(annotate_shard, records, config, judge_cfg=..., world_dir=..., root=..., image_root=...)

``fn(shard, **kwargs) -> list`` must be a module-level function (it is pickled to the workers) that builds what
it needs (a judge, a policy) from plain config inside the task: never ship an open HTTP client or a model.
Results come back in the input order, whatever order the shards finish in. ``runner: none`` (or one shard)
calls ``fn`` on everything in this process, with no Prefect at all.

Dask and Ray runners need their Prefect integration installed: ``prefect-dask`` is pinned (pyproject.toml);
``prefect-ray`` is not (``pip install prefect-ray==0.6.0`` pulls ray 2.60, see docs/scaling.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUNNERS = ("none", "thread", "process", "dask", "ray")


@dataclass(frozen=True)
class FanoutConfig:
    """How to fan out (conf: ``fanout: {runner, shards, address, workers}``)."""

    runner: str = "none"        # none | thread | process | dask | ray
    shards: int = 1             # pieces the records are cut into (one Prefect task each)
    address: str | None = None  # dask: tcp://scheduler:8786, ray: ray://head:10001; None = a local cluster
    workers: int | None = None  # local pool / local cluster size (None = the runner's default)

    def __post_init__(self) -> None:
        if self.runner not in RUNNERS:
            raise ValueError(f"fanout.runner: {self.runner!r} is not one of {', '.join(RUNNERS)}")
        if self.shards < 1:
            raise ValueError(f"fanout.shards must be >= 1, got {self.shards}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"fanout.workers must be >= 1 or null, got {self.workers}")
        if self.address and self.runner not in ("dask", "ray"):
            raise ValueError(f"fanout.address only applies to the dask and ray runners, not {self.runner!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> FanoutConfig:
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"fanout: unknown key(s) {unknown}; keys are {sorted(cls.__dataclass_fields__)}")
        return cls(**values)


def split(items: Sequence[Any], shards: int) -> list[list[Any]]:
    """Contiguous, balanced pieces in order (sizes differ by at most one); never an empty piece."""
    count = min(shards, len(items)) or 1
    size, extra = divmod(len(items), count)
    pieces, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        pieces.append(list(items[start:end]))
        start = end
    return pieces


def make_task_runner(config: FanoutConfig) -> Any:
    """The Prefect task runner the config names (Dask/Ray imported only when asked for)."""
    if config.runner == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=config.workers)
    if config.runner == "process":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=config.workers)
    if config.runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as error:  # pragma: no cover - pinned in pyproject
            raise ImportError("fanout.runner=dask needs prefect-dask: pip install prefect-dask==0.3.7") from error
        if config.address:
            return DaskTaskRunner(address=config.address)
        kwargs = {"n_workers": config.workers} if config.workers else {}
        return DaskTaskRunner(cluster_kwargs={**kwargs, "threads_per_worker": 1, "dashboard_address": None})
    if config.runner == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError as error:
            raise ImportError("fanout.runner=ray needs prefect-ray, which is not pinned: "
                              "pip install prefect-ray==0.6.0 (see docs/scaling.md)") from error
        return RayTaskRunner(address=config.address) if config.address else RayTaskRunner()
    raise ValueError(f"no task runner for fanout.runner={config.runner!r}")


def fan_out(fn: Callable[..., list[Any]], items: Sequence[Any], config: FanoutConfig, **kwargs: Any) -> list[Any]:
    """``fn(shard, **kwargs)`` over ``config.shards`` pieces of ``items``; the results joined in input order."""
    if config.runner == "none":
        return _checked(fn, list(items), kwargs)
    pieces = split(items, config.shards)
    if len(pieces) == 1:
        return _checked(fn, pieces[0], kwargs)
    from prefect import flow

    runner_flow = flow(name="silkfire-fanout", task_runner=make_task_runner(config), log_prints=True,
                       flow_run_name=f"{getattr(fn, '__name__', 'fn')} x {len(pieces)} shards ({config.runner})")(
        _fan_out_flow)
    return runner_flow(fn, pieces, kwargs)


def _fan_out_flow(fn: Callable[..., list[Any]], pieces: list[list[Any]], kwargs: dict[str, Any]) -> list[Any]:
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    shard_task = task(_checked, name="shard", cache_policy=NO_CACHE,
                      task_run_name=f"{getattr(fn, '__name__', 'fn')}-shard")
    futures = [shard_task.submit(fn, piece, kwargs) for piece in pieces]
    results: list[Any] = []
    for future in futures:  # in submission (= input) order
        results.extend(future.result())
    return results


def _checked(fn: Callable[..., list[Any]], piece: list[Any], kwargs: dict[str, Any]) -> list[Any]:
    out = fn(piece, **kwargs)
    if not isinstance(out, list) or len(out) != len(piece):
        raise ValueError(f"{getattr(fn, '__name__', fn)} returned {type(out).__name__} of "
                         f"{len(out) if isinstance(out, list) else '?'} items for a shard of {len(piece)}: "
                         "a shard function must return one result per input record")
    return out


def annotate_shard(records: list[dict[str, Any]], *, judge: Mapping[str, Any], world_dir: str | None,
                   root: str, image_root: str | None) -> list[dict[str, Any]]:
    """Annotate one shard with the judge built from its config inside the task (the annotate stage's judge)."""
    from silkfire.feedback.judges import make_judge

    built = make_judge(dict(judge), world_dir=Path(world_dir) if world_dir else None, root=Path(root))
    try:
        return list(built.annotate(records, image_root=image_root))
    finally:
        close = getattr(built, "close", None)
        if callable(close):
            close()
