"""Parameter sweeps: one DVC experiment (or one flow run) per point, one MLflow child run per point, a plot.

    silkfire sweep train.learning_rate=1e-3,2e-3 --metric evaluate.val.mme.sft.perception
    silkfire sweep fire.dialogues.train_questions=300,600,1200,2400 experiment=fire_llava \\
        --target pipelines/fire/dvc.yaml --metric fire_bench.val.<key>

Overrides use Hydra's own grammar: a comma list or ``range()``/``choice()`` is swept, anything else is fixed for
every point; several swept keys give their cartesian product (what ``hydra --multirun`` would run). Each point is

* ``--mode dvc`` (default): ``dvc exp run -S <fixed> -S <point> --name <sweep>-<i> [target]``, so
  ``dvc exp show`` lists every point with its params and metrics; only stages whose params changed re-run;
* ``--mode flow``: the Prefect pipeline flow with the point's overrides (its ``pipeline`` run becomes the child).

MLflow gets a ``sweep`` parent run with one child per point (the point's params, the chosen metric, the DVC
experiment name; the stage runs nest under it) and, at the end, the plot of the metric against the swept value
(``sweep/<metric>.png``) and the table (``sweep/results.csv``, ``sweep/results.md``, ``sweep/results.json``).
``--metric FILE.KEY`` reads ``<paths.metrics>/FILE.json`` (a stage's metrics) at the dotted ``KEY``, never a test
figure of an evaluation stage (silkfire.selection: those are reported, never chosen on; use their ``val`` keys).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from silkfire.flow import flow_runner as pipeline_runner
from silkfire.flow import latest_pipeline_run

SWEEP_TAG = "silkfire.sweep"
PARENT_TAG = "mlflow.parentRunId"


class SweepError(ValueError):
    """A sweep that cannot run as asked (bad override, unknown metric, ...)."""


@dataclass(frozen=True)
class SweepSpec:
    """Swept keys with their values (in order) and the overrides every point shares."""

    swept: dict[str, list[str]]
    fixed: list[str]

    def points(self) -> list[dict[str, str]]:
        keys = list(self.swept)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.swept[key] for key in keys))]


@dataclass
class PointResult:
    index: int
    values: dict[str, str]
    experiment: str
    run_id: str
    status: str = "pending"
    metric: float | None = None
    seconds: float = 0.0
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def parse_overrides(overrides: Sequence[str]) -> SweepSpec:
    """Split Hydra overrides into swept keys (comma lists, range(), choice()) and fixed overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as error:
        raise SweepError(f"cannot parse the overrides {list(overrides)}: {error}") from error
    swept: dict[str, list[str]] = {}
    fixed: list[str] = []
    for override in parsed:
        if not override.is_sweep_override():
            fixed.append(override.input_line)
            continue
        key = override.get_key_element()
        try:
            values = list(override.sweep_string_iterator())
        except HydraException as error:  # glob() needs Hydra's config loader: name the values instead
            raise SweepError(f"{override.input_line}: {error}; list the values (key=a,b,c) or use range()") from error
        if key in swept:
            raise SweepError(f"{key} is swept twice")
        if not values:
            raise SweepError(f"{override.input_line}: no values to sweep")
        swept[key] = values
    if not swept:
        raise SweepError("nothing to sweep: give at least one key with several values, e.g. train.learning_rate=1e-3,2e-3")
    return SweepSpec(swept=swept, fixed=fixed)


def read_metric(metrics_dir: Path, metric: str) -> float:
    """``FILE.KEY`` -> the number at dotted KEY of metrics_dir/FILE.json; a clear error naming file and key."""
    stem, _, key = metric.partition(".")
    if not key:
        raise SweepError(f"--metric {metric!r}: write FILE.KEY, e.g. evaluate.val.mme.sft.perception")
    path = metrics_dir / f"{stem}.json"
    if not path.is_file():
        raise SweepError(f"metric file {path} is missing: did the run reach the stage that writes it?")
    value: Any = json.loads(path.read_text(encoding="utf-8"))
    walked: list[str] = []
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            keys = sorted(value) if isinstance(value, dict) else []
            raise SweepError(f"{path}: no key {'.'.join([*walked, part])!r}; keys there: {keys}")
        value = value[part]
        walked.append(part)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SweepError(f"{path}: {key!r} is {value!r}, not a number")
    return float(value)


def _as_number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def results_table(points: Sequence[PointResult], metric: str) -> list[dict[str, Any]]:
    return [{"point": p.index, **p.values, metric: p.metric, "status": p.status, "experiment": p.experiment,
             "mlflow_run": p.run_id, "seconds": round(p.seconds, 1), **({"error": p.error} if p.error else {})}
            for p in points]


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column, "")
            cells.append(f"{value:.6g}" if isinstance(value, float) else str(value if value is not None else ""))
        lines.append("| " + " | ".join(cells).replace("\n", " ") + " |")
    return "\n".join(lines) + "\n"


def plot(points: Sequence[PointResult], swept: dict[str, list[str]], metric: str) -> Any:
    """Metric vs the first swept key; one line per combination of the other swept keys."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(swept)
    x_key, others = keys[0], keys[1:]
    numeric = all(_as_number(v) is not None for v in swept[x_key])
    fig, ax = plt.subplots(figsize=(6, 4))
    groups: dict[tuple[str, ...], list[PointResult]] = {}
    for point in points:
        groups.setdefault(tuple(point.values[k] for k in others), []).append(point)
    for group, members in groups.items():
        done = [p for p in members if p.metric is not None]
        if numeric:
            done.sort(key=lambda p: float(p.values[x_key]))
            xs: list[Any] = [float(p.values[x_key]) for p in done]
        else:
            xs = [swept[x_key].index(p.values[x_key]) for p in done]
        label = ", ".join(f"{k}={v}" for k, v in zip(others, group)) or None
        ax.plot(xs, [p.metric for p in done], marker="o", label=label)
    if not numeric:
        ax.set_xticks(range(len(swept[x_key])), swept[x_key])
    elif len(swept[x_key]) > 2 and all(float(v) > 0 for v in swept[x_key]):
        values = sorted(float(v) for v in swept[x_key])
        if values[-1] / values[0] >= 20:  # learning rates, betas, data sizes over decades: log axis
            ax.set_xscale("log")
    ax.set_xlabel(x_key)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs {x_key}")
    ax.grid(True, alpha=0.3)
    if others:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _dvc_exp_run(root: Path, overrides: Sequence[str], name: str, targets: Sequence[str],
                 env: dict[str, str]) -> None:
    dvc = Path(sys.executable).with_name("dvc")
    command = [str(dvc) if dvc.exists() else "dvc", "exp", "run", "--name", name]
    for override in overrides:
        command += ["-S", override]
    command += list(targets)
    print("$ " + " ".join(command), flush=True)
    completed = subprocess.run(command, cwd=root, env=env)
    if completed.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` exited with {completed.returncode}")


def _point_env(parent_run_id: str) -> dict[str, str]:
    from silkfire.tracking.runs import PARENT_RUN_ENV

    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)  # stage commands call `silkfire` from this environment
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env[PARENT_RUN_ENV] = parent_run_id
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def run_sweep(overrides: Sequence[str], metric: str, *, mode: str = "dvc", targets: Sequence[str] = (),
              name: str | None = None, root: Path | None = None,
              flow_runner: Callable[[list[str]], Any] | None = None) -> dict[str, Any]:
    """Run every point of the sweep; returns {"parent_run_id", "name", "points": table rows, "failed"}."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    from silkfire.config import compose, project_root
    from silkfire.selection import SelectionError, require_validation_metric
    from silkfire.stages import pipeline_stages
    from silkfire.stages.runner import check_config
    from silkfire.tracking.runs import run_tags, safe_params
    from silkfire.tracking.store import configure
    from silkfire.workspace import workspace_lock

    if mode not in ("dvc", "flow"):
        raise SweepError(f"--mode must be dvc or flow, not {mode!r}")
    try:  # the sweep names a best point: it must be chosen on a validation figure
        stage, _, key = metric.partition(".")
        require_validation_metric(stage, key, "--metric")
    except SelectionError as error:
        raise SweepError(str(error)) from error
    if mode == "flow" and targets:
        raise SweepError("--target applies to --mode dvc only (the flow runs pipeline.branches)")
    spec = parse_overrides(overrides)
    root = (root or project_root()).resolve()
    # Compose every point before running any: a bad key or value fails now, not after hours of training.
    configs = []
    for point in spec.points():
        try:
            cfg = compose([*spec.fixed, *(f"{k}={v}" for k, v in point.items())], root)
            check_config(cfg, pipeline_stages(list(cfg.pipeline.branches)))
            configs.append(cfg)
        except Exception as error:  # Hydra's errors name the key, check_config the stage; say which point
            raise SweepError(f"point {point} does not compose: {error}") from error
    base = configs[0]
    experiment_id = configure(root, base.tracking.experiment_name)
    client = MlflowClient()
    sweep_name = name or f"sweep-{uuid.uuid4().hex[:6]}"
    label = " ".join(f"{k}={','.join(v)}" for k, v in spec.swept.items())
    parent = client.create_run(experiment_id, run_name=f"sweep {label}", tags={
        **run_tags(root), SWEEP_TAG: sweep_name, "silkfire.sweep.metric": metric, "silkfire.sweep.mode": mode,
        "silkfire.sweep.fixed": " ".join(spec.fixed) or "(none)"})
    parent_id = parent.info.run_id
    params = [Param(key, value) for key, value in safe_params(base).items() if key not in spec.swept]
    params += [Param(f"sweep.{key}", ",".join(values)) for key, values in spec.swept.items()]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(parent_id, params=params[start:start + 100])

    # The sweep holds the workspace from its first point to its last (a run started meanwhile is refused); the
    # stage commands of `dvc exp run` and the flow runs of flow mode join its lock.
    try:
        with workspace_lock(root, what=f"sweep {sweep_name}"):
            results = _run_points(client, experiment_id, parent_id, sweep_name, spec, configs, metric, mode,
                                  targets, root, flow_runner)
    except BaseException:
        client.set_terminated(parent_id, "FAILED")
        raise
    failed = sum(p.status != "done" for p in results)
    rows = _finish_parent(client, parent_id, results, spec, metric, "FAILED" if failed else "FINISHED")
    return {"parent_run_id": parent_id, "name": sweep_name, "points": rows, "failed": failed}


def _run_points(client: Any, experiment_id: str, parent_id: str, sweep_name: str, spec: SweepSpec,
                configs: Sequence[Any], metric: str, mode: str, targets: Sequence[str], root: Path,
                flow_runner: Callable[[list[str]], Any] | None) -> list[PointResult]:
    from silkfire.tracking.runs import run_tags

    results: list[PointResult] = []
    for index, (point, cfg) in enumerate(zip(spec.points(), configs)):
        point_overrides = [*spec.fixed, *(f"{k}={v}" for k, v in point.items())]
        experiment_name = f"{sweep_name}-{index}"
        print(f"\n=== sweep {sweep_name}: point {index + 1}/{len(configs)}: "
              + " ".join(f"{k}={v}" for k, v in point.items()), flush=True)
        started = time.perf_counter()
        result = PointResult(index=index, values=point, experiment=experiment_name if mode == "dvc" else "",
                             run_id="")
        try:
            if mode == "dvc":
                child = client.create_run(experiment_id, run_name=experiment_name, tags={
                    **run_tags(root), PARENT_TAG: parent_id, SWEEP_TAG: sweep_name,
                    "silkfire.dvc.experiment": experiment_name,
                    "silkfire.overrides": " ".join(point_overrides)})
                result.run_id = child.info.run_id
                _dvc_exp_run(root, point_overrides, experiment_name, targets, _point_env(result.run_id))
            else:
                since = int(time.time() * 1000)
                (flow_runner or pipeline_runner(root))(point_overrides)
                result.run_id = latest_pipeline_run(client, experiment_id, since)
                client.set_tag(result.run_id, PARENT_TAG, parent_id)
                client.set_tag(result.run_id, SWEEP_TAG, sweep_name)
            result.metric = read_metric(root / cfg.paths.metrics, metric)
            result.status = "done"
        except SweepError:  # the metric is not where --metric says: every point would fail the same way
            _close(client, result, "FAILED", started)
            _finish_parent(client, parent_id, [*results, result], spec, metric, "FAILED")
            raise
        except Exception as error:  # a failed point is recorded; the others still run
            result.status, result.error = "failed", str(error)[:500]
            print(f"point {index} failed: {error}", file=sys.stderr, flush=True)
        result.seconds = time.perf_counter() - started
        if result.run_id:
            for key, value in point.items():
                client.log_param(result.run_id, f"sweep.{key}", value)
            if result.metric is not None:
                client.log_metric(result.run_id, f"sweep/{metric}", result.metric)
                client.log_metric(parent_id, f"sweep/{metric}", result.metric, step=index)
            if mode == "dvc":
                client.set_terminated(result.run_id, "FINISHED" if result.status == "done" else "FAILED")
        results.append(result)
    return results


def _close(client: Any, result: PointResult, status: str, started: float) -> None:
    result.status = "failed"
    result.seconds = time.perf_counter() - started
    if result.run_id:
        client.set_terminated(result.run_id, status)


def _finish_parent(client: Any, parent_id: str, results: Sequence[PointResult], spec: SweepSpec, metric: str,
                   status: str) -> list[dict[str, Any]]:
    """Table and plot as artefacts of the sweep run, then close it."""
    import matplotlib.pyplot as plt

    rows = results_table(results, metric)
    text = markdown(rows)
    client.log_text(parent_id, text, "sweep/results.md")
    client.log_text(parent_id, json.dumps(rows, indent=2), "sweep/results.json")
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
    client.log_text(parent_id, buffer.getvalue(), "sweep/results.csv")
    if any(p.metric is not None for p in results):
        figure = plot(results, spec.swept, metric)
        client.log_figure(parent_id, figure, f"sweep/{metric}.png")
        plt.close(figure)
        best = max((p for p in results if p.metric is not None), key=lambda p: p.metric)
        client.set_tag(parent_id, "silkfire.sweep.best", " ".join(f"{k}={v}" for k, v in best.values.items()))
    client.set_terminated(parent_id, status)
    return rows
