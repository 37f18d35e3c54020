"""Alignment rounds (issue 18): the Silkie branch run again and again from the current champion, shipping only a
validated winner.

Round k:
1. its start is the model holding ``@champion`` of ``silkfire-dpo`` (none yet: the SFT model), downloaded once per
   version under ``silkie.rounds.champion_dir``;
2. the pipeline flow runs the Silkie branch with ``silkie.start_model`` = that start (DPO starts from it and uses it
   as the reference; evaluate_dpo measures it beside the DPO model), the start as a member of the sampling pool,
   the branch seed ``silkie.seed + k - 1`` (new instructions and samples each round; round 1 is exactly the
   one-round pipeline, cached when that has run) and a replay share of the earlier rounds' gated pairs;
3. `register_dpo` promotes the DPO model only when it beats the champion on the *validation* rule
   (``silkie.register``); a losing round leaves the champion where it was.

The series lives in ``<paths.reports>/rounds/<name>/rounds.json`` (one entry per round: its start, overrides, run,
pairs, decision and figures). A round is written there as ``planned`` (with its start) before it runs and ``done``
after, so an interrupted round re-runs from the same start -- DVC skips its finished stages and DPO resumes from its
checkpoints -- and a finished round is never run again. Each round's gated pairs are archived (md5-pinned) as the
replay sources of later rounds; its data version is the dvc.lock its pipeline run logs (``lineage/dvc.lock``).

MLflow: one ``rounds`` parent run per series; each round's pipeline run is its child (tag ``silkfire.round``); the
parent holds the curve (``rounds/<metric>`` per step = round), ``rounds/rounds.{md,json,png}``.

Orchestration layer (beside silkfire.sweeps): it runs the flow; no library module imports it.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from silkfire.flow import flow_runner as pipeline_runner
from silkfire.flow import latest_pipeline_run

ROUNDS_TAG = "silkfire.rounds"  # on the parent run and every round's pipeline run: the series name
ROUND_TAG = "silkfire.round"
PARENT_TAG = "mlflow.parentRunId"
BRANCH = "pipeline.branches=[silkie]"
# The curve: validation figures of each round's DPO model (challenger) and of its start (the champion it faced).
CURVE = (("val_mmhal_score", "MMHal-style score (val)", "max"),
         ("val_hallucination_rate", "hallucination rate (val)", "min"),
         ("val_mme_perception", "MME-style perception (val)", "max"))


class RoundsError(RuntimeError):
    """A rounds series that cannot go on as asked (the message says what to do)."""


@dataclass
class Round:
    round: int
    seed: int
    start: dict[str, Any]  # {"model": registered name or "sft", "version": int | None, "path": relative HF folder}
    overrides: list[str]
    status: str = "planned"  # planned -> done
    run_id: str = ""
    pairs: int | None = None
    replayed: int | None = None
    pairs_file: dict[str, str] = field(default_factory=dict)  # the archived gated pairs: {"path", "md5", "label"}
    challenger_version: int | None = None
    promoted: bool | None = None
    reason: str = ""
    champion_after: dict[str, Any] = field(default_factory=dict)  # {"model", "version"} once the round is done
    challenger: dict[str, float] = field(default_factory=dict)  # the round's DPO model: val_* and test_* figures
    start_figures: dict[str, float] = field(default_factory=dict)  # its start, same evaluation
    stages_ran: list[str] = field(default_factory=list)  # the pipeline stages DVC ran (cached ones did no work)
    seconds: float = 0.0

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Round:
        return cls(**{key: raw[key] for key in cls.__dataclass_fields__ if key in raw})


def manifest_path(root: Path, cfg: Any, name: str) -> Path:
    return root / str(cfg.paths.reports) / "rounds" / name / "rounds.json"


def read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"rounds": [], "parent_run_id": ""}
    return json.loads(path.read_text(encoding="utf-8"))


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    from silkfire.io import write_json

    write_json(path, manifest)


def champion_start(client: Any, cfg: Any, root: Path) -> dict[str, Any]:
    """The round's start: ``silkfire-dpo@champion`` downloaded under ``silkie.rounds.champion_dir`` (once per version),
    or the SFT model while there is no DPO champion."""
    import mlflow

    from silkfire.tracking.champion import champion_version
    from silkfire.tracking.registry import hf_model_dir

    name, alias = str(cfg.silkie.register.model), str(cfg.silkie.register.alias)
    current = champion_version(client, name, alias)
    if current is None:
        return {"model": "sft", "version": None, "path": str(cfg.paths.sft) + "/model"}
    version = int(current.version)
    folder = root / str(cfg.silkie.rounds.champion_dir) / f"{name}-v{version}"
    done = folder / ".downloaded"
    if not done.is_file():  # registry versions are immutable: a finished download is reused
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=str(folder))
        done.write_text(f"models:/{name}/{version}\n", encoding="utf-8")
    model_dir = hf_model_dir(folder)
    return {"model": name, "version": version, "path": model_dir.relative_to(root).as_posix()}


def round_overrides(base: Sequence[str], number: int, base_seed: int, start: dict[str, Any],
                    replay: Sequence[dict[str, str]], replay_share: float) -> list[str]:
    """The pipeline overrides of round ``number``: the user's, then the round's (which win)."""
    overrides = [*base, BRANCH, f"silkie.seed={base_seed + number - 1}", f"silkie.start_model={start['path']}"]
    if start["version"] is not None:  # the SFT model is in the pool already (as `sft`)
        overrides.append(f"silkie.sample.pool.champion={{kind:hf,path:'{start['path']}'}}")
    if replay:
        sources = ",".join(f"{{path:'{item['path']}',md5:'{item['md5']}',label:'{item['label']}'}}" for item in replay)
        overrides += [f"silkie.pairs.replay.share={replay_share}", f"silkie.pairs.replay.sources=[{sources}]"]
    return overrides


def archive_pairs(cfg: Any, root: Path, name: str, number: int) -> dict[str, str]:
    """Copy the round's gated pairs (what DPO trained on, replayed pairs included) under the archive dir."""
    from silkfire.artefacts import gated_pairs
    from silkfire.io import file_digest

    target = root / str(cfg.silkie.rounds.archive_dir) / name / f"round-{number}.pairs.jsonl"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(gated_pairs(cfg, root), target)
    return {"path": target.relative_to(root).as_posix(), "md5": file_digest(target), "label": f"round{number}"}


def figures(evaluation: dict[str, Any], model: str) -> dict[str, float]:
    """val_* and test_* headline figures of ``model`` (sft | dpo) in metrics/evaluate_dpo.json."""
    keys = ("mmhal_score", "hallucination_rate", "mme_perception", "mme_cognition")
    out = {f"test_{key}": float(evaluation[model][key]) for key in keys}
    out |= {f"val_{key}": float(evaluation["val"][model][key]) for key in keys if "val" in evaluation}
    return out


def run_rounds(overrides: Sequence[str] = (), *, total: int | None = None, more: int | None = None,
               name: str = "rounds", root: Path | None = None,
               flow_runner: Callable[[list[str]], Any] | None = None) -> dict[str, Any]:
    """Run the series ``name`` up to ``total`` rounds (or ``more`` rounds past its finished ones); returns the
    manifest. Finished rounds are skipped, a planned (interrupted) one re-runs from its recorded start."""
    from mlflow import MlflowClient

    from silkfire.config import compose, project_root
    from silkfire.stages import pipeline_stages
    from silkfire.stages.runner import check_config
    from silkfire.tracking.runs import run_tags
    from silkfire.tracking.store import configure
    from silkfire.workspace import workspace_lock

    if (total is None) == (more is None):
        raise RoundsError("give the series length (--rounds N) or how many rounds to add (--more K), not both")
    root = (root or project_root()).resolve()
    base = list(overrides)
    cfg = compose([*base, BRANCH], root)
    check_config(cfg, pipeline_stages(["silkie"]))
    if not cfg.tracking.log_model:
        raise RoundsError("alignment rounds promote registered models: tracking.log_model must stay true")
    path = manifest_path(root, cfg, name)
    experiment_id = configure(root, cfg.tracking.experiment_name)
    client = MlflowClient()
    with workspace_lock(root, what=f"rounds {name}"):  # the flow runs of the rounds join it
        manifest = read_manifest(path)
        rounds = [Round.from_dict(raw) for raw in manifest["rounds"]]
        finished = sum(item.status == "done" for item in rounds)
        target = total if total is not None else finished + int(more or 0)
        if not manifest["parent_run_id"]:
            parent = client.create_run(experiment_id, run_name=f"rounds {name}", tags={
                **run_tags(root), ROUNDS_TAG: name, "silkfire.kind": "rounds",
                "silkfire.overrides": " ".join(base) or "(none)"})
            manifest["parent_run_id"] = parent.info.run_id
            write_manifest(path, manifest)
        parent_id = manifest["parent_run_id"]
        client.update_run(parent_id, status="RUNNING")
        runner = flow_runner or pipeline_runner(root)
        try:
            for number in range(1, target + 1):
                if number <= len(rounds) and rounds[number - 1].status == "done":
                    continue
                if number > len(rounds):
                    start = champion_start(client, cfg, root)
                    replay = [item.pairs_file for item in rounds if item.status == "done" and item.pairs_file]
                    share = float(cfg.silkie.rounds.replay_share)
                    rounds.append(Round(number, int(cfg.silkie.seed) + number - 1, start,
                                        round_overrides(base, number, int(cfg.silkie.seed), start, replay, share)))
                    manifest["rounds"] = [asdict(item) for item in rounds]
                    write_manifest(path, manifest)
                current = rounds[number - 1]
                _run_round(client, current, cfg, root, name, parent_id, experiment_id, runner)
                manifest["rounds"] = [asdict(item) for item in rounds]
                write_manifest(path, manifest)
                publish(client, parent_id, rounds, current)
        except BaseException:
            client.set_terminated(parent_id, "FAILED")
            raise
        client.set_terminated(parent_id, "FINISHED")
    return manifest


def _run_round(client: Any, current: Round, cfg: Any, root: Path, name: str, parent_id: str, experiment_id: str,
               runner: Callable[[list[str]], Any]) -> None:
    start = current.start
    origin = "the SFT model" if start["version"] is None else f"{start['model']} v{start['version']}"
    print(f"\n=== rounds {name}: round {current.round} from {origin}", flush=True)
    started = time.perf_counter()
    since = int(time.time() * 1000)
    rows = runner(list(current.overrides)) or []
    current.stages_ran = [row["stage"] for row in rows if isinstance(row, dict) and row.get("status") == "ran"]
    current.run_id = latest_pipeline_run(client, experiment_id, since)
    client.set_tag(current.run_id, PARENT_TAG, parent_id)
    client.set_tag(current.run_id, ROUNDS_TAG, name)
    client.set_tag(current.run_id, ROUND_TAG, str(current.round))
    metrics_dir = root / str(cfg.paths.metrics)
    evaluation = _read(metrics_dir / "evaluate_dpo.json")
    decision = _read(metrics_dir / "register_dpo.json")
    pairs = _read(metrics_dir / "pairs.json")
    current.pairs, current.replayed = int(pairs.get("pairs", 0)), int(pairs.get("replayed", 0))
    current.pairs_file = archive_pairs(cfg, root, name, current.round)
    current.challenger, current.start_figures = figures(evaluation, "dpo"), figures(evaluation, "sft")
    current.challenger_version = decision.get("challenger_version")
    current.promoted = bool(decision.get("promoted"))
    current.reason = str(decision.get("reason", ""))
    after = client_champion(client, cfg)
    current.champion_after = {"model": str(cfg.silkie.register.model), "version": after} if after else \
        {"model": "sft", "version": None}
    current.status = "done"
    current.seconds = round(time.perf_counter() - started, 1)


def client_champion(client: Any, cfg: Any) -> int | None:
    from silkfire.tracking.champion import champion_version

    current = champion_version(client, str(cfg.silkie.register.model), str(cfg.silkie.register.alias))
    return None if current is None else int(current.version)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RoundsError(f"{path} is missing after the round's pipeline run: did the Silkie branch run?")
    return json.loads(path.read_text(encoding="utf-8"))


# ---- the curve ---------------------------------------------------------------------------------------------------
def champion_label(start: dict[str, Any]) -> str:
    return "SFT" if start.get("version") is None else f"v{start['version']}"


def table_rows(rounds: Sequence[Round]) -> list[dict[str, Any]]:
    """One row per finished round: its start, pairs, the challenger's and its start's val figures, the decision."""
    rows = []
    for item in rounds:
        if item.status != "done":
            continue
        row: dict[str, Any] = {"round": item.round, "start": champion_label(item.start),
                               "pairs": item.pairs, "replayed": item.replayed,
                               "challenger": f"v{item.challenger_version}" if item.challenger_version else "-"}
        for key, _, _ in CURVE:
            row[key] = round(item.challenger.get(key, float("nan")), 4)
            row[f"start_{key}"] = round(item.start_figures.get(key, float("nan")), 4)
        row["promoted"] = bool(item.promoted)
        row["champion_after"] = champion_label(item.champion_after)
        rows.append(row)
    return rows


def markdown(rounds: Sequence[Round]) -> str:
    rows = table_rows(rounds)
    head = ("| round | start | pairs (replayed) | challenger | val MMHal score | val halluc. rate | val MME-P "
            "| promoted | champion after |")
    lines = [head, "|---:|---|---:|---|---:|---:|---:|---|---|"]
    for row in rows:
        def pair(key: str) -> str:
            return f"{row[key]:.3f} (start {row[f'start_{key}']:.3f})" if "mme" not in key else \
                f"{row[key]:.1f} (start {row[f'start_{key}']:.1f})"
        lines.append(f"| {row['round']} | {row['start']} | {row['pairs']} ({row['replayed']}) | {row['challenger']} "
                     f"| {pair('val_mmhal_score')} | {pair('val_hallucination_rate')} | {pair('val_mme_perception')} "
                     f"| {'yes' if row['promoted'] else 'no'} | {row['champion_after']} |")
    final = final_champion(rounds)
    if final:
        lines += ["", f"Final champion: {final['label']} (round {final['round']}); its test figures: "
                      + ", ".join(f"{key[5:]} {value:.3f}" for key, value in final["test"].items())]
    return "\n".join(lines) + "\n"


def final_champion(rounds: Sequence[Round]) -> dict[str, Any] | None:
    """The last promoted round's DPO model and its test figures (None while no round was promoted)."""
    promoted = [item for item in rounds if item.status == "done" and item.promoted]
    if not promoted:
        return None
    last = promoted[-1]
    return {"round": last.round, "label": f"v{last.challenger_version}",
            "test": {key: value for key, value in last.challenger.items() if key.startswith("test_")}}


def plot(rounds: Sequence[Round]) -> Any:
    """Per validation metric: the challenger of each round (filled when promoted) and the champion it faced."""
    from silkfire.tracking.plots import _pyplot

    plt = _pyplot()
    rows = table_rows(rounds)
    fig, axes = plt.subplots(1, len(CURVE), figsize=(4.4 * len(CURVE), 3.6))
    for ax, (key, title, mode) in zip(axes, CURVE):
        steps = [row["round"] for row in rows]
        ax.plot(steps, [row[f"start_{key}"] for row in rows], color="grey", linestyle="--", marker="s",
                label="start (champion)")
        ax.plot(steps, [row[key] for row in rows], color="tab:blue", label="challenger")
        for row in rows:
            ax.scatter([row["round"]], [row[key]], s=50, color="tab:blue",
                       facecolors="tab:blue" if row["promoted"] else "white", zorder=3)
        ax.set(xlabel="round", title=f"{title} ({'higher' if mode == 'max' else 'lower'} is better)")
        ax.set_xticks(steps)
        ax.legend(fontsize=7)
    fig.suptitle("Alignment rounds (filled: promoted)")
    fig.tight_layout()
    return fig


def publish(client: Any, parent_id: str, rounds: Sequence[Round], finished: Round) -> None:
    """The curve on the series' parent run: the ``finished`` round's figures as metrics (step = round), the whole
    table, JSON and PNG."""
    from silkfire.tracking.plots import _pyplot

    rows = table_rows(rounds)
    for row in (row for row in rows if row["round"] == finished.round):
        for key, _, _ in CURVE:
            client.log_metric(parent_id, f"rounds/{key}", row[key], step=row["round"])
            client.log_metric(parent_id, f"rounds/start_{key}", row[f"start_{key}"], step=row["round"])
        client.log_metric(parent_id, "rounds/promoted", float(row["promoted"]), step=row["round"])
    text = markdown(rounds)
    client.log_text(parent_id, text, "rounds/rounds.md")
    client.log_text(parent_id, json.dumps(rows, indent=2), "rounds/rounds.json")
    client.set_tag(parent_id, "mlflow.note.content", "# Alignment rounds\n\n" + text)
    if rows:
        figure = plot(rounds)
        client.log_figure(parent_id, figure, "rounds/rounds.png")
        _pyplot().close(figure)


def show(name: str = "rounds", root: Path | None = None, overrides: Sequence[str] = ()) -> str:
    """The series' table (printed) and its PNG beside the manifest; returns the table."""
    from silkfire.config import compose, project_root
    from silkfire.tracking.plots import _pyplot

    root = (root or project_root()).resolve()
    cfg = compose(list(overrides), root)
    path = manifest_path(root, cfg, name)
    if not path.is_file():
        raise RoundsError(f"no rounds series {name!r} here ({path} is missing): run `silkfire rounds run --rounds N`")
    rounds = [Round.from_dict(raw) for raw in read_manifest(path)["rounds"]]
    text = markdown(rounds)
    (path.parent / "rounds.md").write_text(text, encoding="utf-8")
    if table_rows(rounds):
        figure = plot(rounds)
        figure.savefig(path.parent / "rounds.png", dpi=110)
        _pyplot().close(figure)
    pending = [item.round for item in rounds if item.status != "done"]
    if pending:
        text += f"\nRound {pending[0]} was interrupted: `silkfire rounds run` resumes it from the same start.\n"
    print(text, file=sys.stdout)
    return text
