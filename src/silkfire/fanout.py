"""Fan record-level work (sampling, annotation) out over shards: one Prefect task per shard, on a task runner
that is local threads or processes here and a Dask or Ray cluster on real infrastructure.

    config = FanoutConfig(runner="dask", shards=32, address="tcp://scheduler:8786")
    annotated = fan_out(annotate_shard, records, config, judge=..., world_dir=..., root=..., image_root=...)
    # annotate_shard: silkfire.vlfeedback.judges (this module imports no other silkfire module)

``fn(shard, **kwargs) -> list`` must be a module-level function (it is pickled to the workers) that builds what
it needs (a judge, a policy) from plain config inside the task: never ship an open HTTP client or a model.
Results come back in the input order, whatever order the shards finish in. ``runner: none`` (or one shard
without a timeout) calls ``fn`` on everything in this process, with no Prefect at all.

:func:`fan_out_shards` is the measured form the silkie stages use: ``fn(shard, **kwargs) -> (list, metrics)``,
and every shard comes back as a :class:`ShardResult` (its results, its metrics, its seconds) for the stage to
sum. ``timeout_s`` bounds each shard (Prefect's task ``timeout_seconds``); a shard over it fails the whole
fan-out with :class:`ShardTimeout`, naming the shard and its record id range.

Dask and Ray runners need their Prefect integration installed: ``prefect-dask`` is pinned (pyproject.toml);
``prefect-ray`` is not (``pip install prefect-ray==0.6.0`` pulls ray 2.60, see docs/scaling.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

RUNNERS = ("none", "thread", "process", "dask", "ray")


@dataclass(frozen=True)
class FanoutConfig:
    """How to fan out (conf: ``silkie.fanout: {runner, shards, address, workers, timeout_s}``)."""

    runner: str = "none"        # none | thread | process | dask | ray
    shards: int = 1             # pieces the records are cut into (one Prefect task each)
    address: str | None = None  # dask: tcp://scheduler:8786, ray: ray://head:10001; None = a local cluster
    workers: int | None = None  # local pool / local cluster size (None = the runner's default)
    timeout_s: float | None = None  # per-shard limit in seconds (Prefect task timeout_seconds); None = no limit

    def __post_init__(self) -> None:
        if self.runner not in RUNNERS:
            raise ValueError(f"fanout.runner: {self.runner!r} is not one of {', '.join(RUNNERS)}")
        if self.shards < 1:
            raise ValueError(f"fanout.shards must be >= 1, got {self.shards}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"fanout.workers must be >= 1 or null, got {self.workers}")
        if self.address and self.runner not in ("dask", "ray"):
            raise ValueError(f"fanout.address only applies to the dask and ray runners, not {self.runner!r}")
        if self.timeout_s is not None:
            if self.timeout_s <= 0:
                raise ValueError(f"fanout.timeout_s must be > 0 or null, got {self.timeout_s}")
            if self.runner == "none":
                raise ValueError("fanout.timeout_s needs a Prefect runner (thread, process, dask or ray): "
                                 "runner none runs in this process, without a timeout")

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


class ShardTimeout(TimeoutError):
    """A shard ran past ``fanout.timeout_s``; the message names the shard and its records."""


@dataclass
class ShardResult:
    """One shard's outcome: one result per input item, the shard function's metrics, its seconds of work."""

    index: int
    results: list[Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _item_id(item: Any) -> Any:
    if isinstance(item, Mapping):
        return item.get("id")
    return getattr(item, "id", None)


def describe_records(piece: Sequence[Any], start: int) -> str:
    """``records 'a' .. 'k' (12 records)`` from the items' ``id`` (key or attribute), else their positions."""
    first, last = (_item_id(piece[0]), _item_id(piece[-1])) if piece else (None, None)
    if first is None or last is None:
        return f"items {start} .. {start + len(piece) - 1} of the input ({len(piece)} items)"
    return f"records {first!r} .. {last!r} ({len(piece)} records)"


def fan_out(fn: Callable[..., list[Any]], items: Sequence[Any], config: FanoutConfig, **kwargs: Any) -> list[Any]:
    """``fn(shard, **kwargs)`` over ``config.shards`` pieces of ``items``; the results joined in input order."""
    shards = _fan_out(fn, items, config, measured=False, describe=describe_records, kwargs=kwargs)
    return [result for shard in shards for result in shard.results]


def fan_out_shards(fn: Callable[..., tuple[list[Any], dict[str, Any]]], items: Sequence[Any], config: FanoutConfig,
                   *, describe: Callable[[Sequence[Any], int], str] = describe_records,
                   **kwargs: Any) -> list[ShardResult]:
    """``fn(shard, **kwargs) -> (results, metrics)`` over the shards; one :class:`ShardResult` per shard, in input
    order. ``describe(piece, start)`` names a shard's items in a timeout error (default: their record ids)."""
    return _fan_out(fn, items, config, measured=True, describe=describe, kwargs=kwargs)


def _fan_out(fn: Callable[..., Any], items: Sequence[Any], config: FanoutConfig, *, measured: bool,
             describe: Callable[[Sequence[Any], int], str], kwargs: dict[str, Any]) -> list[ShardResult]:
    if config.runner == "none":
        return [_run_shard(fn, 0, list(items), kwargs, measured)]
    pieces = split(items, config.shards)
    if len(pieces) == 1 and config.timeout_s is None:
        return [_run_shard(fn, 0, pieces[0], kwargs, measured)]
    starts = [sum(len(piece) for piece in pieces[:index]) for index in range(len(pieces))]
    labels = [describe(piece, start) for piece, start in zip(pieces, starts)]  # for errors, computed here
    from prefect import flow

    name = getattr(fn, "__name__", "fn")
    runner_flow = flow(name="silkfire-fanout", task_runner=make_task_runner(config), log_prints=True,
                       flow_run_name=f"{name} x {len(pieces)} shards ({config.runner})")(_fan_out_flow)
    return runner_flow(fn, pieces, kwargs, measured, config.timeout_s, labels, config.runner)


def _fan_out_flow(fn: Callable[..., Any], pieces: list[list[Any]], kwargs: dict[str, Any], measured: bool,
                  timeout_s: float | None, labels: list[str], runner: str) -> list[ShardResult]:
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    name = getattr(fn, "__name__", "fn")
    shard_task = task(_run_shard, name="shard", cache_policy=NO_CACHE, timeout_seconds=timeout_s,
                      task_run_name=f"{name}-shard-{{index}}")
    futures = [shard_task.submit(fn, index, piece, kwargs, measured) for index, piece in enumerate(pieces)]
    results: list[ShardResult] = []
    for index, future in enumerate(futures):  # in submission (= input) order
        try:
            results.append(future.result())
        except TimeoutError as error:  # prefect's TaskRunTimeoutError (a TimeoutError), also through Dask
            raise ShardTimeout(f"fanout shard {index} of {len(pieces)} ({labels[index]}) ran past fanout.timeout_s="
                               f"{timeout_s:g} s on the {runner} runner and was stopped: raise fanout.timeout_s or "
                               f"use more shards ({error})") from None
    return results


def _run_shard(fn: Callable[..., Any], index: int, piece: list[Any], kwargs: dict[str, Any],
               measured: bool) -> ShardResult:
    started = time.perf_counter()
    out = fn(piece, **kwargs)
    results, metrics = out if measured else (out, {})
    if not isinstance(results, list) or len(results) != len(piece):
        raise ValueError(f"{getattr(fn, '__name__', fn)} returned {type(results).__name__} of "
                         f"{len(results) if isinstance(results, list) else '?'} items for a shard of {len(piece)}: "
                         "a shard function must return one result per input record")
    return ShardResult(index, results, dict(metrics or {}), round(time.perf_counter() - started, 3))


def sum_metrics(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-shard counters summed key by key (nested dicts too), keys in first-seen order; a ``*cost_usd`` sum is
    rounded to 6 places as the clients round it. Non-numbers must agree across shards (else ValueError)."""
    total: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key not in total:
                total[key] = dict(sum_metrics([value])) if isinstance(value, Mapping) else value
            elif isinstance(value, Mapping):
                total[key] = sum_metrics([total[key], value])
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key] = total[key] + value
            elif total[key] != value:
                raise ValueError(f"shard metrics disagree on {key!r}: {total[key]!r} vs {value!r}")
    for key, value in total.items():
        if key.endswith("cost_usd") and isinstance(value, float):
            total[key] = round(value, 6)
    return total


def fanout_summary(config: FanoutConfig, shards: Sequence[ShardResult]) -> dict[str, Any]:
    """What a stage reports about its fan-out: runner, shard count, seconds of work (sum over shards, slowest)."""
    seconds = [shard.seconds for shard in shards]
    return {"runner": config.runner, "shards": len(shards), "shard_seconds_total": round(sum(seconds), 3),
            "shard_seconds_max": max(seconds, default=0.0)}
