"""`silkfire report`: the results tables of a whole-pipeline seed sweep, with confidence intervals.

Reads the FINISHED pipeline runs of a sweep (``silkfire sweep seed=0,1,2 ... --mode flow --name NAME``) from
MLflow, downloads the per-item artefacts of their evaluation stages, recomputes every metric with the library's
own scoring functions (checking them against the stage's logged metrics), and writes ``report.json`` (everything),
``report.md`` (rendered from the JSON by :func:`render_markdown`, nothing else) and ``report.png``.

Several sweeps can go into one report (``silkfire report --sweep seeds --sweep foundation-seeds``): every seed's
foundation figures (evaluate) feed the foundation tables and the plateau section; a branch's tables and
differences use only the seeds whose pipeline ran that branch (its ``evaluate_dpo`` / ``fire_bench`` stage run);
every table carries its n. A seed found in two sweeps counts once: its newest FINISHED run (the report says so).

Statistics (pure functions below):

- a metric over seeds: mean and a 95% Student-t interval (n = 1: no interval, and the report says so);
- a difference (DPO - SFT, FIRE - SFT baseline, trained - untrained teacher): a two-level paired percentile
  bootstrap: resample the seeds with replacement, then within each drawn seed resample its paired items with
  replacement (the same items for both models), and average the per-seed differences. Items are MMHal-style
  items, MME-style images (question_ids, resampled within their category so every subtask keeps its size),
  free dialogues, fixed-dialogue teacher items.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPORT_BEGIN = "<!-- silkfire-report:begin -->"
REPORT_END = "<!-- silkfire-report:end -->"
CONFIDENCE = 0.95
DEFAULT_B = 2000
SCHEMA = 2  # 2: several sweeps (sweeps, duplicates), n per table and difference, omitted, plateau
# The tiny model's plateau: a constant answer scores 50 per MME-style subtask (acc 50, acc+ 0), perception 200
# (blind SFT lands within a few points, ~230). A seed "left the plateau" when its VAL MME-style perception is at
# least twice that: 100 per subtask on average.
PLATEAU_PERCEPTION = 200.0
PLATEAU_THRESHOLD = 400.0
BRANCH_STAGES = {"silkie": "evaluate_dpo", "fire": "fire_bench"}
BRANCH_TITLES = {"silkie": "Silkie (SFT vs DPO)", "fire": "FIRE (free and fixed dialogue)"}


class ReportError(ValueError):
    """The sweep cannot be reported as asked (missing runs, a failed run, a stage without artefacts)."""


# ---- statistics: over seeds --------------------------------------------------------------------------------------
def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean and Student-t interval of per-seed values: ``{"n", "mean", "sd", "ci": [low, high] | None, "note"}``.

    With one value there is no spread to estimate: ``ci`` is None and ``note`` says so."""
    data = [float(v) for v in values]
    if not data:
        raise ValueError("no values")
    n, mean = len(data), sum(data) / len(data)
    if n == 1:
        return {"n": 1, "mean": mean, "sd": None, "ci": None, "note": "one seed: no interval"}
    from scipy.stats import t

    sd = math.sqrt(sum((v - mean) ** 2 for v in data) / (n - 1))
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci": [mean - half, mean + half], "note": ""}


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> list[float]:
    """The percentile bootstrap interval (numpy's linear interpolation between order statistics)."""
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(np.asarray(samples, dtype=float), [tail, 100 - tail])
    return [float(low), float(high)]


# ---- statistics: the paired two-level bootstrap ------------------------------------------------------------------
# A statistic maps resampled item components (m resamples, n items, k components) to m values.
Statistic = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Paired:
    """One seed's paired items: component rows of model a (baseline) and model b, row i of both = item i.

    ``strata`` (one label per item): resample within each stratum, so each keeps its size (MME: the category)."""

    a: np.ndarray
    b: np.ndarray
    strata: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.a.shape != self.b.shape or self.a.ndim != 2 or not len(self.a):
            raise ValueError(f"paired items need equal (n >= 1, k) shapes, got {self.a.shape} and {self.b.shape}")


def draw_indices(paired: Paired, rng: np.random.Generator, m: int) -> np.ndarray:
    """m resamples (rows) of item indices with replacement; with strata, column j draws from j's stratum."""
    n = len(paired.a)
    if paired.strata is None:
        return rng.integers(0, n, size=(m, n))
    index = np.empty((m, n), dtype=np.int64)
    for label in np.unique(paired.strata):
        members = np.flatnonzero(paired.strata == label)
        index[:, members] = members[rng.integers(0, len(members), size=(m, len(members)))]
    return index


def resampled_differences(paired: Paired, statistic: Statistic, rng: np.random.Generator, m: int,
                          chunk: int = 256) -> np.ndarray:
    """statistic(b) - statistic(a) on m item resamples, the same items for both models (that is the pairing)."""
    out = []
    for start in range(0, m, chunk):
        index = draw_indices(paired, rng, min(chunk, m - start))
        out.append(statistic(paired.b[index]) - statistic(paired.a[index]))
    return np.concatenate(out) if out else np.zeros(0)


def point_difference(paired: Paired, statistic: Statistic) -> float:
    return float(statistic(paired.b[None])[0] - statistic(paired.a[None])[0])


def paired_bootstrap(seeds: Sequence[Paired], statistic: Statistic, *, B: int = DEFAULT_B, seed: int = 0,
                     confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Two-level paired percentile bootstrap of mean over seeds of (statistic(b) - statistic(a)).

    Each replicate draws len(seeds) seeds with replacement and, for every draw, resamples that seed's paired items
    with replacement (a seed drawn twice gets two independent item resamples). Returns
    ``{"mean", "per_seed", "ci", "excludes_zero", "B", "bootstrap_seed", "n_seeds", "items"}``."""
    if not seeds:
        raise ValueError("no seeds")
    rng = np.random.default_rng(seed)
    count = len(seeds)
    picks = rng.integers(0, count, size=(B, count))
    values = np.zeros((B, count))
    for index, paired in enumerate(seeds):
        mask = picks == index
        if mask.any():
            values[mask] = resampled_differences(paired, statistic, rng, int(mask.sum()))
    per_seed = [point_difference(paired, statistic) for paired in seeds]
    ci = percentile_interval(values.mean(axis=1), confidence)
    return {"mean": sum(per_seed) / count, "per_seed": per_seed, "ci": ci, "excludes_zero": excludes_zero(ci),
            "B": B, "bootstrap_seed": seed, "n_seeds": count, "items": [len(p.a) for p in seeds]}


def excludes_zero(ci: Sequence[float] | None) -> bool | None:
    if ci is None:
        return None
    return bool(ci[0] > 0 or ci[1] < 0)


# ---- per-item decompositions (each reproduces the library's score on the full set; tests check it) --------------
def mean_of(column: int) -> Statistic:
    return lambda rows: rows[..., column].mean(axis=-1)


def share_below(column: int, limit: float) -> Statistic:
    return lambda rows: (rows[..., column] < limit).mean(axis=-1)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (free_dialogue_metrics' convention for ATR, RR)."""
    safe = np.where(denominator > 0, denominator, 1)
    return np.where(denominator > 0, numerator / safe, 0.0)


# MME images: [category code, questions, correct answers, all correct (0/1)]
def mme_images(records: Sequence[Mapping[str, Any]], codes: Mapping[str, int]) -> dict[tuple[str, str], list[int]]:
    """(category, question_id) -> components, by the official parser (silkfire.eval.mme.parse_yes_no)."""
    from silkfire.eval.mme import parse_yes_no

    images: dict[tuple[str, str], list[int]] = {}
    for record in records:
        key = (record["category"], record["question_id"])
        right = parse_yes_no(record["prediction"]) == str(record["answer"]).lower()
        row = images.setdefault(key, [codes[record["category"]], 0, 0, 1])
        row[1] += 1
        row[2] += int(right)
        row[3] = int(row[3] and right)
    return images


def mme_group_statistic(codes: Sequence[int]) -> Statistic:
    """Sum over the given categories of 100*acc + 100*acc_plus (MME perception or cognition) of resampled images.

    Images must be resampled within their category (strata), so column j always holds category codes[j]."""
    wanted = set(codes)

    def statistic(rows: np.ndarray) -> np.ndarray:
        total = np.zeros(rows.shape[0])
        categories = rows[0, :, 0]
        for code in np.unique(categories):
            if int(code) not in wanted:
                continue
            block = rows[:, categories == code, :]
            total += 100 * block[..., 2].sum(-1) / block[..., 1].sum(-1) + 100 * block[..., 3].mean(-1)
        return total

    return statistic


# Free dialogues: [turns n_i, gain s_last - s_first, per-turn gain (0 when n_i < 2), n_i >= 2, wrong first, refined]
def dialogue_components(scores: Sequence[int | None], threshold: float) -> list[float]:
    """One dialogue's share of AT, ADR, ATR, RR (silkfire.fire.metrics.free_dialogue_metrics; None counts 0)."""
    if not scores:
        raise ValueError("a dialogue needs at least one teacher turn")
    values = [0 if score is None else score for score in scores]
    gain = values[-1] - values[0]
    several = len(values) >= 2
    wrong = values[0] < threshold
    return [len(values), gain, gain / (len(values) - 1) if several else 0.0, float(several), float(wrong),
            float(wrong and values[-1] >= threshold)]


FREE_STATISTICS: dict[str, Statistic] = {
    "AT": mean_of(0),
    "ADR": mean_of(1),
    "ATR": lambda rows: _ratio(rows[..., 2].sum(-1), rows[..., 3].sum(-1)),
    "RR": lambda rows: _ratio(rows[..., 5].sum(-1), rows[..., 4].sum(-1)),
}


def teacher_error(generated: str, reference: str) -> float | None:
    """One fixed-dialogue teacher item's absolute score error (silkfire.fire.metrics.score_mae): unparsable
    generated score = UNPARSABLE_ERROR; None when the reference has no score (skipped)."""
    from silkfire.fire.metrics import UNPARSABLE_ERROR
    from silkfire.fire.text import parse_score

    truth = parse_score(reference)
    if truth is None:
        return None
    score = parse_score(generated)
    return float(UNPARSABLE_ERROR) if score is None else float(abs(score - truth))


# ---- reading one seed's artefacts --------------------------------------------------------------------------------
def paired_items(a: Mapping[Any, list[float]], b: Mapping[Any, list[float]], what: str,
          strata_of: Callable[[Any], Any] | None = None) -> tuple[Paired, int]:
    """Rows of the keys both models have, in a's order; and how many keys only one of them has."""
    keys = [key for key in a if key in b]
    if not keys:
        raise ReportError(f"{what}: no items in common between the two models' files")
    strata = np.array([strata_of(key) for key in keys]) if strata_of else None
    paired = Paired(np.array([a[k] for k in keys], dtype=float), np.array([b[k] for k in keys], dtype=float), strata)
    return paired, len(set(a) ^ set(b))


def mmhal_key(item: Mapping[str, Any]) -> Any:
    """item_id ("<scene_id>/<type>") when the items carry it, else (image_id, question)."""
    return item["item_id"] if item.get("item_id") else (item.get("image_id"), item.get("question"))


def read_mme(path: Path) -> list[dict[str, Any]]:
    from silkfire.io import read_records

    return read_records(path)


def score_mme_files(files: Mapping[str, Path]) -> dict[str, Any]:
    """Per model: the library's MME scores, and its images as components (for the bootstrap)."""
    from silkfire.eval.mme import WORLD_CATEGORY_GROUPS, score_mme

    codes = {category: index for index, category in enumerate(WORLD_CATEGORY_GROUPS)}
    out: dict[str, Any] = {}
    for label, path in files.items():
        records = read_mme(path)
        scores = score_mme(records, WORLD_CATEGORY_GROUPS)
        images = mme_images(records, codes)
        _agree(f"{path.name} perception", scores["perception"], _mme_total(images, codes, "perception"))
        out[label] = {"scores": scores, "images": images}
    return out


def _mme_total(images: Mapping[Any, list[int]], codes: Mapping[str, int], group: str) -> float:
    from silkfire.eval.mme import WORLD_CATEGORY_GROUPS

    rows = np.array(list(images.values()), dtype=float)
    return float(mme_group_statistic(_group_codes(group, codes, WORLD_CATEGORY_GROUPS))(rows[None])[0])


def _group_codes(group: str, codes: Mapping[str, int], groups: Mapping[str, str]) -> list[int]:
    return [codes[category] for category, name in groups.items() if name == group]


def _agree(what: str, library: float, decomposed: float) -> None:
    """The bootstrap's decomposition must give the library's number on the full set, or its CI means nothing."""
    if not math.isclose(library, decomposed, rel_tol=1e-9, abs_tol=1e-9):
        raise ReportError(f"{what}: the per-item decomposition gives {decomposed}, the library {library}")


def mme_paired(scored: Mapping[str, Any], a: str, b: str, what: str) -> tuple[Paired, int]:
    return paired_items(scored[a]["images"], scored[b]["images"], what, strata_of=lambda key: key[0])


def read_mmhal(path: Path) -> tuple[dict[str, Any], dict[Any, list[float]]]:
    """The library's MMHal scores of a rated file, and item key -> [rating]."""
    from silkfire.eval.mmhal import item_rating, score_mmhal
    from silkfire.io import read_records

    items = read_records(path)
    scores = score_mmhal(items)
    ratings = {mmhal_key(item): [float(item_rating(item, index))] for index, item in enumerate(items)}
    if len(ratings) != len(items):
        raise ReportError(f"{path.name}: {len(items) - len(ratings)} duplicate item key(s): items cannot be paired")
    _agree(f"{path.name} score", scores["score"], float(np.mean([r[0] for r in ratings.values()])))
    return scores, ratings


def read_free(path: Path, threshold: float) -> tuple[dict[str, Any], dict[Any, list[float]]]:
    """The library's AT/ADR/ATR/RR of a free-dialogue file, and (image, question) -> dialogue components."""
    from silkfire.fire.metrics import free_dialogue_metrics, read_scored_dialogues

    dialogues = read_scored_dialogues(path)
    metrics = free_dialogue_metrics(dialogues, threshold)
    components = {(d.image, d.question): dialogue_components(d.scores, threshold) for d in dialogues}
    if len(components) != len(dialogues):
        raise ReportError(f"{path.name}: a task appears twice: dialogues cannot be paired")
    rows = np.array(list(components.values()))[None]
    for name, statistic in FREE_STATISTICS.items():
        _agree(f"{path.name} {name}", metrics[name], float(statistic(rows)[0]))
    return metrics, components


def read_fixed_teacher(path: Path) -> tuple[dict[str, Any], dict[Any, list[float]]]:
    """The library's score MAE of a fixed-dialogue teacher file, and (dialogue, turn) -> [absolute error]."""
    from silkfire.fire.bench import EMPTY_RESPONSE
    from silkfire.fire.metrics import score_mae
    from silkfire.io import read_records

    rows = read_records(path)
    # The stage scores a blank generation as EMPTY_RESPONSE (unparsable): the same here.
    generated = [str(row.get("generated") or "").strip() or EMPTY_RESPONSE for row in rows]
    mae = score_mae(generated, [row["reference"] for row in rows])
    errors = {}
    for row, text in zip(rows, generated):
        error = teacher_error(text, row["reference"])
        if error is not None:
            errors[(row["dialogue"], row["turn"])] = [error]
    if len(errors) != mae["items"]:
        raise ReportError(f"{path.name}: a (dialogue, turn) appears twice: items cannot be paired")
    if errors:
        _agree(f"{path.name} MAE", mae["MAE"], float(np.mean([e[0] for e in errors.values()])))
    return mae, errors


# ---- MLflow: the sweep's runs ------------------------------------------------------------------------------------
PARENT_TAG = "mlflow.parentRunId"
KIND_TAG = "silkfire.kind"
SWEEP_TAG = "silkfire.sweep"
STAGE_TAG = "silkfire.stage"
PRODUCED_BY = "silkfire.produced_by"
EVAL_STAGES = {"evaluate": None, "evaluate_dpo": "silkie", "fire_bench": "fire"}  # stage -> branch (None: always)


@dataclass
class SeedRun:
    seed: int
    run: Any  # the pipeline (parent) run
    stages: dict[str, Any]  # evaluation stage -> the run that produced its outputs (cached records followed)
    sweep: str = ""


def all_experiments(client: Any) -> list[str]:
    """Every experiment id of the store (a sweep's runs may live in several)."""
    return [experiment.experiment_id for experiment in client.search_experiments()]


def search_runs(client: Any, query: str, experiments: Sequence[str]) -> list[Any]:
    """Every run matching ``query`` (all pages), newest first."""
    runs, token = [], None
    while True:
        page = client.search_runs(list(experiments), query, max_results=1000, page_token=token,
                                  order_by=["attributes.start_time DESC"])
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _seed_of(run: Any) -> int | None:
    text = run.data.tags.get("silkfire.seed", run.data.params.get("seed"))
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _expected_seeds(client: Any, sweep: str, experiments: Sequence[str]) -> tuple[list[int] | None, list[Any]]:
    """The seeds the sweep run asked for (param sweep.seed), and its points' errors (sweep/results.json)."""
    sweeps = [run for run in search_runs(client, f"tags.`{SWEEP_TAG}` = '{sweep}'", experiments)
              if run.data.tags.get(KIND_TAG) != "pipeline"]
    if not sweeps:
        return None, []
    sweep_run = sweeps[0]
    others = sorted(key for key in sweep_run.data.params if key.startswith("sweep.") and key != "sweep.seed")
    if others:
        raise ReportError(f"sweep {sweep!r} also sweeps {', '.join(k[6:] for k in others)}: a report compares "
                          "seeds of one configuration (sweep seed=... only)")
    seeds = sweep_run.data.params.get("sweep.seed")
    points: list[Any] = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = client.download_artifacts(sweep_run.info.run_id, "sweep/results.json", folder)
            points = json.loads(Path(path).read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 -- a sweep still running (or killed) has no table: the errors are optional
        points = []
    return ([int(s) for s in seeds.split(",")] if seeds else None), points


def _producer(client: Any, run: Any) -> Any:
    """The run that produced a stage's outputs: a `<stage> (cached)` record points at it (chains followed)."""
    for _ in range(100):
        if not (produced_by := run.data.tags.get(PRODUCED_BY)):
            return run
        run = client.get_run(produced_by)
    raise ReportError(f"run {run.info.run_id}: {PRODUCED_BY} chain longer than 100")


def _branches(run: Any) -> list[str]:
    text = run.data.params.get("pipeline.branches", "[]")
    return [part.strip(" '\"") for part in text.strip("[]").split(",") if part.strip(" '\"")]


def find_seed_runs(client: Any, sweep: str, experiments: Sequence[str] | None = None) -> list[SeedRun]:
    """One FINISHED pipeline run per seed of the sweep (the newest when a seed was run again), with its evaluation
    stages' producing runs; a ReportError names every seed that is missing, failed, or lacks a stage. Seeds may
    differ in the branches they ran (the tables of a branch use the seeds that ran it)."""
    experiments = list(experiments or all_experiments(client))
    runs = search_runs(client, f"tags.`{SWEEP_TAG}` = '{sweep}' and tags.`{KIND_TAG}` = 'pipeline'", experiments)
    expected, points = _expected_seeds(client, sweep, experiments)
    if not runs:
        raise ReportError(f"no pipeline runs tagged {SWEEP_TAG}={sweep!r}: run `silkfire sweep seed=0,1,2 "
                          f"--mode flow --name {sweep} ...` first (or check the name)")
    by_seed: dict[int, list[Any]] = {}
    for run in runs:
        seed = _seed_of(run)
        if seed is None:
            raise ReportError(f"pipeline run {run.info.run_id}: no seed (tag silkfire.seed or param seed)")
        by_seed.setdefault(seed, []).append(run)
    problems = []
    chosen: dict[int, Any] = {}
    for seed in sorted(set(by_seed) | set(expected or [])):
        finished = [run for run in by_seed.get(seed, []) if run.info.status == "FINISHED"]
        if finished:
            chosen[seed] = finished[0]  # newest first
        elif seed in by_seed:
            statuses = ", ".join(f"{run.info.run_id} {run.info.status}" for run in by_seed[seed])
            problems.append(f"seed {seed}: no FINISHED pipeline run ({statuses})")
        else:
            errors = [str(p.get("error")) for p in points if str(p.get("seed")) == str(seed) and p.get("error")]
            problems.append(f"seed {seed}: no pipeline run in the sweep" + (f" (the point failed: {errors[0]})"
                                                                              if errors else ""))
    result = []
    for seed, run in chosen.items():
        try:
            result.append(SeedRun(seed, run, stage_runs(client, run, experiments), sweep))
        except ReportError as error:
            problems.append(f"seed {seed}: {error}")
    if problems:
        raise ReportError(f"sweep {sweep!r} cannot be reported:\n  " + "\n  ".join(problems))
    return result


def merge_seed_runs(per_sweep: Sequence[Sequence[SeedRun]]) -> tuple[list[SeedRun], list[dict[str, Any]]]:
    """One run per seed over several sweeps: a seed found in more than one takes its newest FINISHED pipeline run
    (by start time); the second value lists those seeds (``{"seed", "sweeps", "used_sweep", "used_run_id"}``)."""
    by_seed: dict[int, list[SeedRun]] = {}
    for runs in per_sweep:
        for seed_run in runs:
            by_seed.setdefault(seed_run.seed, []).append(seed_run)
    chosen, duplicates = [], []
    for seed in sorted(by_seed):
        candidates = by_seed[seed]
        newest = max(candidates, key=lambda r: r.run.info.start_time or 0)
        chosen.append(newest)
        if len(candidates) > 1:
            duplicates.append({"seed": seed, "sweeps": [r.sweep for r in candidates], "used_sweep": newest.sweep,
                               "used_run_id": newest.run.info.run_id})
    return chosen, duplicates


def stage_runs(client: Any, run: Any, experiments: Sequence[str]) -> dict[str, Any]:
    """A pipeline run's stage runs by stage name (the newest of each)."""
    parent = run.info.run_id
    children = search_runs(client, f"tags.`{PARENT_TAG}` = '{parent}'", experiments)
    found: dict[str, Any] = {}
    for child in children:  # newest first: keep the newest of each stage
        stage = child.data.tags.get(STAGE_TAG)
        if stage in EVAL_STAGES and stage not in found:
            found[stage] = _producer(client, child)
    wanted = [stage for stage, branch in EVAL_STAGES.items() if branch is None or branch in _branches(run)]
    missing = [stage for stage in wanted if stage not in found]
    if missing:
        raise ReportError(f"pipeline run {parent}: no run of stage(s) {', '.join(missing)}")
    return found


def download(client: Any, run: Any, path: str, folder: Path, *, required: bool = True) -> Path | None:
    """One artefact file of a run, or a ReportError naming the run and the file (None when not required)."""
    try:
        return Path(client.download_artifacts(run.info.run_id, path, str(folder)))
    except Exception as error:  # noqa: BLE001 -- MLflow raises several types for a missing artefact
        if not required:
            return None
        stage = run.data.tags.get(STAGE_TAG, "?")
        raise ReportError(f"stage {stage} run {run.info.run_id} has no artefact {path} ({type(error).__name__})") \
            from None


# ---- the report --------------------------------------------------------------------------------------------------
def stat_cell(values: Sequence[float]) -> dict[str, Any]:
    return {"per_seed": [float(v) for v in values], **t_interval(values)}


def _check(checks: list[dict[str, Any]], seed: int, stage_run: Any, key: str, value: float) -> None:
    """Compare a recomputed number with the stage's logged metric (when it logged it)."""
    logged = stage_run.data.metrics.get(key)
    if logged is None:
        return
    agree = math.isclose(float(logged), value, rel_tol=1e-6, abs_tol=1e-6)
    checks.append({"seed": seed, "stage": stage_run.data.tags.get(STAGE_TAG), "run_id": stage_run.info.run_id,
                   "metric": key, "logged": float(logged), "recomputed": value, "agree": agree})


def _threshold(stage_run: Any, pipeline_run: Any) -> float:
    from silkfire.fire.metrics import DEFAULT_THRESHOLD

    if (logged := stage_run.data.metrics.get("free.oracle.sft.threshold")) is not None:
        return float(logged)
    for key in ("fire.bench.stop_score", "fire.dialogues.stop_score"):
        text = pipeline_run.data.params.get(key)
        if text not in (None, "None", "null", ""):
            return float(text)
    return float(DEFAULT_THRESHOLD)


@dataclass
class SeedData:
    """Everything read from one seed's artefacts, per split ("test"; "val" where the stage wrote it)."""

    seed: int
    mme: dict[str, Any]  # split -> label -> scored (evaluate)
    silkie: dict[str, Any] | None = None  # split -> {"mme", "mmhal"} (evaluate_dpo)
    fire: dict[str, Any] | None = None  # split -> {"free", "fixed", "threshold"} (fire_bench)


SPLITS = {"test": ("", ""), "val": ("val/", "val.")}  # split -> (artefact sub-folder, logged metric prefix)


def _read_silkie(client: Any, stage: Any, split: str, work: Path, checks: list[dict[str, Any]],
                 seed: int) -> dict[str, Any] | None:
    folder, metric = SPLITS[split]
    required = split == "test"  # val files are secondary: absent (an older run) means no val table
    paths = {f"{kind}_{label}": download(client, stage, f"predictions/{folder}{name}_{label}.jsonl",
                                         work / "evaluate_dpo" / split, required=required)
             for kind, name in (("mme", "mme_predictions"), ("mmhal", "mmhal_rated")) for label in ("sft", "dpo")}
    if any(path is None for path in paths.values()):
        return None
    mme = score_mme_files({label: paths[f"mme_{label}"] for label in ("sft", "dpo")})
    mmhal = {label: read_mmhal(paths[f"mmhal_{label}"]) for label in ("sft", "dpo")}
    for label in ("sft", "dpo"):
        _check(checks, seed, stage, f"{metric}{label}.mmhal_score", mmhal[label][0]["score"])
        _check(checks, seed, stage, f"{metric}{label}.hallucination_rate", mmhal[label][0]["hallucination_rate"])
        _check(checks, seed, stage, f"{metric}{label}.mme_perception", mme[label]["scores"]["perception"])
    return {"mme": mme, "mmhal": mmhal}


def _read_fire(client: Any, stage: Any, split: str, work: Path, checks: list[dict[str, Any]], seed: int,
               threshold: float) -> dict[str, Any] | None:
    folder, metric = SPLITS[split]
    required = split == "test"
    names = [f"free_oracle_{label}" for label in ("sft", "fire")] + [f"fixed_teacher_{label}"
                                                                      for label in ("sft", "teacher")]
    paths = {name: download(client, stage, f"fire_bench/{folder}{name}.jsonl", work / "fire" / split,
                            required=required) for name in names}
    if any(path is None for path in paths.values()):
        return None
    free = {label: read_free(paths[f"free_oracle_{label}"], threshold) for label in ("sft", "fire")}
    fixed = {label: read_fixed_teacher(paths[f"fixed_teacher_{label}"]) for label in ("sft", "teacher")}
    for label in ("sft", "fire"):
        for name in FREE_STATISTICS:
            _check(checks, seed, stage, f"{metric}free.oracle.{label}.{name}", free[label][0][name])
    for label in ("sft", "teacher"):
        _check(checks, seed, stage, f"{metric}fixed.teacher.{label}.MAE", fixed[label][0]["MAE"])
    return {"free": free, "fixed": fixed, "threshold": threshold}


def read_seed(client: Any, seed_run: SeedRun, folder: Path, checks: list[dict[str, Any]],
              progress: bool = False) -> SeedData:
    seed = seed_run.seed
    work = folder / f"seed-{seed}"
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if progress else (lambda text: None)
    evaluate = seed_run.stages["evaluate"]
    say(f"seed {seed}: evaluate artefacts of run {evaluate.info.run_id}")
    data = SeedData(seed, {})
    for split, (subfolder, metric) in SPLITS.items():
        files = {}
        for label in ("sft", "base", "blind"):
            path = download(client, evaluate, f"predictions/{subfolder}mme_predictions_{label}.jsonl",
                            work / "evaluate" / split, required=split == "test" and label == "sft")
            if path is not None:
                files[label] = path
        if files:
            data.mme[split] = score_mme_files(files)
            for label, scored in data.mme[split].items():
                for group in ("perception", "cognition"):
                    _check(checks, seed, evaluate, f"{metric}mme.{label}.{group}", scored["scores"][group])
    if (stage := seed_run.stages.get("evaluate_dpo")) is not None:
        say(f"seed {seed}: evaluate_dpo artefacts of run {stage.info.run_id}")
        data.silkie = {split: block for split in SPLITS
                       if (block := _read_silkie(client, stage, split, work, checks, seed)) is not None}
    if (stage := seed_run.stages.get("fire_bench")) is not None:
        say(f"seed {seed}: fire_bench artefacts of run {stage.info.run_id}")
        threshold = _threshold(stage, seed_run.run)
        data.fire = {split: block for split in SPLITS
                     if (block := _read_fire(client, stage, split, work, checks, seed, threshold)) is not None}
    return data


def _table(title: str, columns: Sequence[str], rows: Sequence[tuple[str, Callable[[SeedData, str], float | None]]],
           seeds: Sequence[SeedData], note: str = "") -> dict[str, Any]:
    """A results table: one row per metric, one cell per model (mean, t-CI, per-seed values)."""
    out_rows = []
    for name, getter in rows:
        cells = {}
        for column in columns:
            values = [getter(seed, column) for seed in seeds]
            if all(v is not None for v in values):
                cells[column] = stat_cell(values)  # type: ignore[arg-type]
        if cells:
            out_rows.append({"metric": name, "cells": cells})
    return {"title": title, "columns": [c for c in columns if any(c in r["cells"] for r in out_rows)],
            "rows": out_rows, "note": note, "n": len(seeds), "seeds": [s.seed for s in seeds]}


def _mme_rows(split: str, seeds: Sequence[SeedData]) -> list[tuple[str, Callable[[SeedData, str], float | None]]]:
    from silkfire.eval.mme import WORLD_CATEGORY_GROUPS

    def total(group: str) -> Callable[[SeedData, str], float | None]:
        return lambda s, label: (s.mme[split][label]["scores"][group] if label in s.mme.get(split, {}) else None)

    def subtask(category: str) -> Callable[[SeedData, str], float | None]:
        def get(s: SeedData, label: str) -> float | None:
            scored = s.mme.get(split, {}).get(label)
            return None if scored is None else scored["scores"]["subtasks"].get(category, {}).get("score")
        return get

    present = [c for c in WORLD_CATEGORY_GROUPS if any(c in s.mme[split][label]["scores"]["subtasks"]
                                                       for s in seeds for label in s.mme.get(split, {}))]
    rows = [(f"{c} ({WORLD_CATEGORY_GROUPS[c]})", subtask(c)) for c in present]
    return rows + [("**perception (total)**", total("perception")), ("**cognition (total)**", total("cognition"))]


def _difference(name: str, key: str, paired: Sequence[Paired], statistic: Statistic, unpaired: Sequence[int],
                B: int, seed: int, unit: str) -> dict[str, Any]:
    result = paired_bootstrap(paired, statistic, B=B, seed=seed)
    return {"name": name, "key": key, "unit": unit, "unpaired": list(unpaired), **result,
            "t": t_interval(result["per_seed"])}


def branch_seeds(seeds: Sequence[SeedData], branch: str, split: str) -> list[SeedData]:
    """The seeds whose pipeline ran the branch, when every one of them has the split (else none: a val split
    missing from one of them, an older run, drops that val table rather than mixing seed sets)."""
    ran = [s for s in seeds if getattr(s, branch) is not None]
    return ran if all(split in getattr(s, branch) for s in ran) else []


def omitted_branches(seeds: Sequence[SeedData]) -> list[str]:
    """One line per branch no seed ran: its tables and differences are left out."""
    return [f"{BRANCH_TITLES[branch]}: tables and differences omitted: none of seeds "
            f"{', '.join(str(s.seed) for s in seeds)} ran the {branch} branch (no {stage} stage run)."
            for branch, stage in BRANCH_STAGES.items() if all(getattr(s, branch) is None for s in seeds)]


def differences(seeds: Sequence[SeedData], B: int = DEFAULT_B, seed: int = 0) -> list[dict[str, Any]]:
    """Every difference of the report with its two-level paired bootstrap CI: test first, then val (secondary)."""
    return [diff for split in SPLITS for diff in _split_differences(seeds, split, B, seed)]


def _split_differences(seeds: Sequence[SeedData], split: str, B: int, seed: int) -> list[dict[str, Any]]:
    from silkfire.eval.mme import WORLD_CATEGORY_GROUPS

    codes = {category: index for index, category in enumerate(WORLD_CATEGORY_GROUPS)}
    perception = mme_group_statistic(_group_codes("perception", codes, WORLD_CATEGORY_GROUPS))
    tag, prefix = f" ({split})", "" if split == "test" else f"{split}."
    out = []

    def add(name: str, key: str, pairs: list[tuple[Paired, int]], statistic: Statistic, unit: str,
            used: Sequence[SeedData]) -> None:
        out.append({"split": split, **_difference(name + tag, prefix + key, [p for p, _ in pairs], statistic,
                                                  [u for _, u in pairs], B, seed, unit),
                    "seeds": [s.seed for s in used]})

    for other in ("base", "blind"):
        if all(split in s.mme and {"sft", other} <= set(s.mme[split]) for s in seeds):
            add(f"SFT - {other}: MME-style perception", f"foundation.sft_minus_{other}.mme_perception",
                [mme_paired(s.mme[split], other, "sft", f"seed {s.seed} evaluate") for s in seeds], perception,
                "images", seeds)
    if silkie := branch_seeds(seeds, "silkie", split):
        blocks = [(s.seed, s.silkie[split]) for s in silkie]
        mmhal = [paired_items(b["mmhal"]["sft"][1], b["mmhal"]["dpo"][1], f"seed {n} mmhal") for n, b in blocks]
        add("DPO - SFT: MMHal-style score (0-6)", "silkie.mmhal_score", mmhal, mean_of(0), "items", silkie)
        add("DPO - SFT: hallucination rate", "silkie.hallucination_rate", mmhal, share_below(0, 3), "items", silkie)
        add("DPO - SFT: MME-style perception", "silkie.mme_perception",
            [mme_paired(b["mme"], "sft", "dpo", f"seed {n} evaluate_dpo") for n, b in blocks], perception, "images",
            silkie)
    if fire := branch_seeds(seeds, "fire", split):
        blocks = [(s.seed, s.fire[split]) for s in fire]
        free = [paired_items(b["free"]["sft"][1], b["free"]["fire"][1], f"seed {n} free dialogue") for n, b in blocks]
        for name, statistic in FREE_STATISTICS.items():
            add(f"FIRE - SFT baseline: {name}", f"fire.{name}", free, statistic, "dialogues", fire)
        fixed = [paired_items(b["fixed"]["sft"][1], b["fixed"]["teacher"][1], f"seed {n} fixed teacher")
                 for n, b in blocks]
        add("trained - untrained teacher: score MAE", "fire.teacher_mae", fixed, mean_of(0), "items", fire)
    return out


def tables(seeds: Sequence[SeedData]) -> list[dict[str, Any]]:
    """The results tables: test first (the headline figures), then val (secondary) where every seed has it."""
    return [{"split": split, **table} for split in SPLITS for table in _split_tables(seeds, split)]


def _split_tables(seeds: Sequence[SeedData], split: str) -> list[dict[str, Any]]:
    tag = "test" if split == "test" else f"{split}, secondary"
    out = []
    if all(split in s.mme for s in seeds):
        out.append(_table(f"Foundation: MME-style ({tag}; score 0-200 per subtask)", ["sft", "base", "blind"],
                          _mme_rows(split, seeds), seeds,
                          "base = the untrained model, blind = SFT on blank images (the floor for reading the image)"
                          if split == "test" else ""))
    if silkie := branch_seeds(seeds, "silkie", split):
        def mmhal(key: str) -> Callable[[SeedData, str], float]:
            return lambda s, label: s.silkie[split]["mmhal"][label][0][key]

        def mme(group: str) -> Callable[[SeedData, str], float]:
            return lambda s, label: s.silkie[split]["mme"][label]["scores"][group]

        out.append(_table(f"Silkie: SFT vs DPO ({tag})", ["sft", "dpo"],
                          [("MMHal-style score (0-6)", mmhal("score")),
                           ("hallucination rate", mmhal("hallucination_rate")),
                           ("MME-style perception", mme("perception")), ("MME-style cognition", mme("cognition"))],
                          silkie))
    if fire := branch_seeds(seeds, "fire", split):
        def free(key: str) -> Callable[[SeedData, str], float]:
            return lambda s, label: s.fire[split]["free"][label][0][key]

        def fixed(key: str) -> Callable[[SeedData, str], float]:
            return lambda s, label: s.fire[split]["fixed"][label][0][key]

        out.append(_table(f"FIRE free dialogue, oracle teacher: SFT baseline vs FIRE ({tag})", ["sft", "fire"],
                          [(key, free(key)) for key in FREE_STATISTICS], fire,
                          "AT: average turns (lower is better); ADR, ATR, RR: higher is better"))
        out.append(_table(f"FIRE fixed dialogue: teacher score MAE, untrained SFT vs trained teacher ({tag})",
                          ["sft", "teacher"], [("score MAE", fixed("MAE")), ("unparsable", fixed("unparsable"))],
                          fire, "lower is better; an unparsable score counts as an error of 10"))
    return out


def plateau_definition(threshold: float = PLATEAU_THRESHOLD) -> str:
    twice = (" (twice the constant answer: 100 per subtask on average)" if threshold == 2 * PLATEAU_PERCEPTION
             else "")
    return (f"The tiny model's plateau is a constant answer: 50 per MME-style subtask, perception "
            f"{PLATEAU_PERCEPTION:g} (within a few points of blind SFT, ~230). A seed left the plateau when its "
            f"VAL MME-style perception (SFT) is >= {threshold:g}{twice}; test figures are reported, not used to "
            "decide.")


def plateau(seeds: Sequence[SeedData], threshold: float = PLATEAU_THRESHOLD) -> dict[str, Any]:
    """Whether SFT left the constant-answer plateau on each seed (val perception >= threshold), the k of n count,
    and the spread (min, max) and mean with t-interval of the SFT test perception over seeds."""
    def perception(seed: SeedData, split: str, label: str) -> float | None:
        scored = seed.mme.get(split, {}).get(label)
        return None if scored is None else float(scored["scores"]["perception"])

    rows = []
    for s in seeds:
        val = perception(s, "val", "sft")
        rows.append({"seed": s.seed, "val_perception": val, "test_perception": perception(s, "test", "sft"),
                     "blind_test_perception": perception(s, "test", "blind"),
                     "left": None if val is None else bool(val >= threshold)})
    decided = [row for row in rows if row["left"] is not None]
    test = [row["test_perception"] for row in rows if row["test_perception"] is not None]
    return {"threshold": float(threshold), "constant_answer_perception": PLATEAU_PERCEPTION,
            "definition": plateau_definition(threshold), "rows": rows,
            "k": sum(1 for row in decided if row["left"]), "n": len(decided),
            "undecided": [row["seed"] for row in rows if row["left"] is None],
            "test_perception": stat_cell(test) if test else None,
            "test_spread": [min(test), max(test)] if test else None}


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")


def _machine(runs: Sequence[SeedRun]) -> dict[str, Any]:
    def values(tag: str) -> list[str]:
        return sorted({r.run.data.tags[tag] for r in runs if tag in r.run.data.tags})

    versions = []
    for text in values("silkfire.versions"):
        try:
            versions.append(json.loads(text))
        except ValueError:
            versions.append(text)
    return {"cpu": values("silkfire.cpu"), "cpu_count": values("silkfire.cpu_count"),
            "threads": values("silkfire.threads"), "python": values("silkfire.python"), "versions": versions}


@contextmanager
def _download_bars(shown: bool) -> Iterator[None]:
    """MLflow draws a progress bar per downloaded file: quiet unless asked (--verbose)."""
    import os

    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "true" if shown else "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def build_report(client: Any, sweep: str | Sequence[str], *, B: int = DEFAULT_B, bootstrap_seed: int = 0,
                 experiments: Sequence[str] | None = None, progress: bool = False,
                 plateau_threshold: float = PLATEAU_THRESHOLD) -> dict[str, Any]:
    """The whole report as a JSON-able dict (see the module docstring); ``sweep``: one name or several."""
    sweeps = [sweep] if isinstance(sweep, str) else list(dict.fromkeys(sweep))
    if not sweeps:
        raise ReportError("no sweep named")
    checks: list[dict[str, Any]] = []
    experiments = list(experiments or all_experiments(client))
    with tempfile.TemporaryDirectory(prefix="silkfire-report-") as folder, _download_bars(progress):
        found = {name: find_seed_runs(client, name, experiments) for name in sweeps}
        seed_runs, duplicates = merge_seed_runs(list(found.values()))
        seeds = [read_seed(client, run, Path(folder), checks, progress) for run in seed_runs]
    runs = [{"seed": r.seed, "sweep": r.sweep, "run_id": r.run.info.run_id, "name": r.run.info.run_name,
             "start": _iso(r.run.info.start_time), "end": _iso(r.run.info.end_time),
             "git_commit": r.run.data.tags.get("silkfire.git_commit") or r.run.data.tags.get(
                 "mlflow.source.git.commit"),
             "stages": {stage: run.info.run_id for stage, run in r.stages.items()}} for r in seed_runs]
    return {
        "schema": SCHEMA,
        "sweep": " + ".join(sweeps),
        "sweeps": [{"name": name, "seeds": sorted(r.seed for r in found[name]),
                    "branches": [branch for branch, stage in BRANCH_STAGES.items()
                                 if any(stage in r.stages for r in found[name])]} for name in sweeps],
        "duplicates": duplicates,
        "seeds": [r.seed for r in seed_runs],
        "measured": {"start": min(r["start"] for r in runs), "end": max(r["end"] or "" for r in runs) or None},
        "git_commits": sorted({r["git_commit"] for r in runs if r["git_commit"]}),
        "machine": _machine(seed_runs),
        "statistics": {"confidence": CONFIDENCE, "over_seeds": "mean, Student-t interval",
                       "differences": "two-level paired percentile bootstrap (seeds, then items within a seed)",
                       "B": B, "bootstrap_seed": bootstrap_seed},
        "runs": runs,
        "tables": tables(seeds),
        "omitted": omitted_branches(seeds),
        "plateau": plateau(seeds, plateau_threshold),
        "differences": differences(seeds, B, bootstrap_seed),
        "checks": checks,
    }


# ---- rendering ---------------------------------------------------------------------------------------------------
def fmt(value: float | None, like: float | None = None) -> str:
    """1 decimal for MME-style scores (0-200 and sums), 3 for rates, turns and ratings; `like` picks the decimals
    (an interval is written with its mean's)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    scale = abs(value if like is None or math.isnan(like) else like)
    return f"{value:.1f}" if scale >= 10 else f"{value:.3f}"


def _interval(ci: Sequence[float] | None, mean: float) -> str:
    return "no CI (n=1)" if ci is None else f"[{fmt(ci[0], mean)}, {fmt(ci[1], mean)}]"


def _cell(cell: Mapping[str, Any] | None) -> str:
    return "-" if cell is None else f"{fmt(cell['mean'])} {_interval(cell['ci'], cell['mean'])}"


def _versions(versions: Sequence[Any]) -> str:
    if not versions:
        return "library versions unknown"
    if len(versions) > 1 or not isinstance(versions[0], Mapping):
        return "library versions differ between the runs (report.json has them)"
    return ", ".join(f"{name} {version}" for name, version in sorted(versions[0].items()))


def _header_lines(report: Mapping[str, Any]) -> list[str]:
    seeds, machine, stats = report["seeds"], report["machine"], report["statistics"]
    # a "-dirty" commit (tracked files changed, e.g. params.yaml rewritten for another seed) keeps its marker
    commits = ", ".join(f"`{commit[:12]}{'-dirty' if commit.endswith('-dirty') else ''}`"
                        for commit in report["git_commits"]) or "unknown"
    one_seed = " With one seed the over-seed intervals are not defined and the bootstrap resamples items only."
    sweeps = report.get("sweeps") or []
    names = " + ".join("`" + s["name"] + "`" for s in sweeps)
    title = f"### Results: sweeps {names}" if len(sweeps) > 1 else f"### Results: sweep `{report['sweep']}`"
    where = []
    if len(sweeps) > 1:
        where = ["Sweeps: " + "; ".join(f"`{s['name']}`: seeds {', '.join(map(str, s['seeds']))} "
                           f"({'branches ' + ', '.join(s['branches']) if s['branches'] else 'foundation only'})"
                           for s in sweeps) + ".", ""]
    for dup in report.get("duplicates") or []:
        where += [f"Seed {dup['seed']} is in sweeps {', '.join(f'`{name}`' for name in dup['sweeps'])}: its newest "
                  f"finished run is used (sweep `{dup['used_sweep']}`, run `{dup['used_run_id'][:12]}`).", ""]
    return [title, "", *where,
            f"Seeds {', '.join(map(str, seeds))} (n = {len(seeds)}); measured {report['measured']['start']} to "
            f"{report['measured']['end']}; commit(s) {commits}; CPU {', '.join(machine['cpu']) or 'unknown'}, "
            f"threads {', '.join(machine['threads']) or 'unknown'}; {_versions(machine['versions'])}.", "",
            f"Cells: mean over seeds [{int(stats['confidence'] * 100)}% Student-t interval]. Differences: "
            f"{stats['differences']}, B = {stats['B']}, bootstrap seed {stats['bootstrap_seed']}."
            + (one_seed if len(seeds) == 1 else ""), ""]


def _table_lines(table: Mapping[str, Any]) -> list[str]:
    columns = table["columns"]
    lines = [f"#### {table['title']}", ""]
    if "n" in table:
        lines += [f"n = {table['n']} seed{'s' if table['n'] != 1 else ''} "
                  f"({', '.join(map(str, table['seeds']))}).", ""]
    lines += ["| metric | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for row in table["rows"]:
        lines.append(f"| {row['metric']} | " + " | ".join(_cell(row["cells"].get(c)) for c in columns) + " |")
    return lines + (["", table["note"]] if table.get("note") else []) + [""]


def _difference_lines(differences: Sequence[Mapping[str, Any]]) -> list[str]:
    if not differences:
        return []
    lines = ["#### Differences (paired bootstrap)", "",
             "| difference | mean | 95% CI | per seed | excludes 0 | paired units per seed | n (seeds) |",
             "|---|---:|---|---|---|---|---|"]
    for diff in differences:
        per_seed = ", ".join(fmt(value, diff["mean"]) for value in diff["per_seed"])
        left_out = sum(diff.get("unpaired") or [])  # items only one model's file had: not compared
        lines.append(f"| {diff['name']} | {fmt(diff['mean'])} | {_interval(diff['ci'], diff['mean'])} | {per_seed} "
                     f"| {'yes' if diff['excludes_zero'] else 'no'} | {', '.join(map(str, diff['items']))} "
                     f"{diff['unit']}{f' ({left_out} unpaired left out)' if left_out else ''} | {_n_seeds(diff)} |")
    lines.append("")
    for diff in differences:
        verdict = "excludes 0" if diff["excludes_zero"] else "includes 0 (no difference shown at this level)"
        lines.append(f"- {diff['name']}: {fmt(diff['mean'])}, 95% CI {_interval(diff['ci'], diff['mean'])} "
                     f"{verdict}.")
    return lines + [""]


def _n_seeds(diff: Mapping[str, Any]) -> str:
    n = diff.get("n_seeds", len(diff["per_seed"]))
    return f"{n} ({', '.join(map(str, diff['seeds']))})" if diff.get("seeds") else str(n)


def _plateau_lines(plateau: Mapping[str, Any] | None) -> list[str]:
    if not plateau:
        return []
    rows = plateau["rows"]
    lines = [f"#### Foundation learns on every seed (SFT; n = {len(rows)} seed{'s' if len(rows) != 1 else ''})", "",
             plateau["definition"], "",
             "| seed | val MME-style perception | test perception | blind test perception | left the plateau |",
             "|---:|---:|---:|---:|---|"]
    for row in rows:
        left = "n/a (no val file)" if row["left"] is None else ("yes" if row["left"] else "no")
        cells = [fmt(row[key], PLATEAU_PERCEPTION)  # MME-style sums: one decimal, 0 included
                 for key in ("val_perception", "test_perception", "blind_test_perception")]
        lines.append(f"| {row['seed']} | " + " | ".join(cells) + f" | {left} |")
    k, n = plateau["k"], plateau["n"]
    lines += ["", f"Left the plateau on {k} of {n} seeds (failure rate {n - k}/{n})"
              + (f"; undecided (no val perception): seeds {', '.join(map(str, plateau['undecided']))}"
                 if plateau["undecided"] else "") + "."]
    if (cell := plateau.get("test_perception")) is not None:
        low, high = plateau["test_spread"]
        lines.append(f"SFT test MME-style perception over {cell['n']} seeds: spread {fmt(low)} to {fmt(high)} "
                     f"(max - min {fmt(high - low, high)}); mean {_cell(cell)}.")
    return lines + [""]


def _checks_line(checks: Sequence[Mapping[str, Any]]) -> str:
    bad = [check for check in checks if not check["agree"]]
    line = (f"Recomputed from the per-item artefacts; {len(checks) - len(bad)} of {len(checks)} logged stage "
            "metrics agree.")
    if bad:
        line += " Disagreeing: " + "; ".join(
            f"seed {c['seed']} {c['stage']} {c['metric']} logged {fmt(c['logged'])} recomputed "
            f"{fmt(c['recomputed'])}" for c in bad) + "."
    return line


def render_markdown(report: Mapping[str, Any]) -> str:
    """report.md, from report.json alone (so a committed README block can be checked against the JSON)."""
    lines = _header_lines(report)
    for table in report["tables"]:
        lines += _table_lines(table)
    for line in report.get("omitted") or []:
        lines += [line, ""]
    lines += _plateau_lines(report.get("plateau"))
    lines += _difference_lines(report["differences"])
    lines.append(_checks_line(report["checks"]))
    return "\n".join(lines) + "\n"


def readme_markers(block: str | None = None) -> tuple[str, str]:
    """The begin/end markers of a README results block; ``block`` names one of several (None: the unnamed one)."""
    if block is None:
        return REPORT_BEGIN, REPORT_END
    return REPORT_BEGIN.replace(" -->", f" {block} -->"), REPORT_END.replace(" -->", f" {block} -->")


def readme_block(text: str, block: str | None = None) -> str | None:
    """What lies between the report markers of a README, or None when it has none."""
    begin, end_marker = readme_markers(block)
    start, end = text.find(begin), text.find(end_marker)
    if start < 0 or end < start:
        return None
    return text[start + len(begin):end]


def readme_block_matches(readme_text: str, report: Mapping[str, Any], block: str | None = None) -> bool:
    """Whether the README's results block is exactly render_markdown(report) (surrounding blank lines aside)."""
    found = readme_block(readme_text, block)
    return found is not None and found.strip() == render_markdown(report).strip()


def replace_readme_block(readme_text: str, report: Mapping[str, Any], block: str | None = None) -> str:
    begin, end_marker = readme_markers(block)
    if readme_block(readme_text, block) is None:
        raise ReportError(f"the README has no {begin} ... {end_marker} block: add the two markers where "
                          "the results belong")
    start = readme_text.find(begin) + len(begin)
    end = readme_text.find(end_marker)
    return readme_text[:start] + "\n" + render_markdown(report) + readme_text[end:]


# ---- the figure --------------------------------------------------------------------------------------------------
HEADLINE_ROWS = ("**perception (total)**", "MMHal-style score (0-6)", "hallucination rate", "AT", "ADR", "RR",
                 "score MAE")


def plot_report(report: Mapping[str, Any]) -> Any:
    """Per-seed points, mean and CI bars: the headline metrics per model, then every difference (zero line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, list[str], list[dict[str, Any]], bool]] = []
    for table in [t for t in report["tables"] if t.get("split", "test") == "test"]:  # the headline figures
        for row in table["rows"]:
            if row["metric"] in HEADLINE_ROWS:
                columns = list(row["cells"])
                panels.append((f"{row['metric'].strip('*')}\n{table['title'].split(':')[0]}", columns,
                               [row["cells"][c] for c in columns], False))
    for diff in [d for d in report["differences"] if d.get("split", "test") == "test"]:
        panels.append((diff["name"].replace(": ", "\n", 1), ["difference"],
                       [{"per_seed": diff["per_seed"], "mean": diff["mean"], "ci": diff["ci"]}], True))
    cols = 4
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, (title, labels, cells, zero) in zip(axes.flat, panels):
        for x, cell in enumerate(cells):
            ax.scatter([x] * len(cell["per_seed"]), cell["per_seed"], color="grey", s=14, zorder=2)
            if cell["ci"] is not None:
                ax.errorbar([x + 0.15], [cell["mean"]], yerr=[[cell["mean"] - cell["ci"][0]],
                                                              [cell["ci"][1] - cell["mean"]]],
                            fmt="o", color="C3", capsize=4, zorder=3)
            else:
                ax.scatter([x + 0.15], [cell["mean"]], color="C3", zorder=3)
        if zero:
            ax.axhline(0, color="black", lw=0.8, ls="--")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        ax.set_title(title, fontsize=8)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"sweep {report['sweep']}: seeds (grey), mean and 95% CI (red)", fontsize=10)
    fig.tight_layout()
    return fig


# ---- writing -----------------------------------------------------------------------------------------------------
def write_report(report: Mapping[str, Any], out: Path) -> dict[str, Path]:
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "report.png"}
    paths["json"].write_text(json.dumps(report, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    # Rendered from the JSON as written (so report.md is what the committed JSON renders to, floats included).
    paths["md"].write_text(render_markdown(json.loads(paths["json"].read_text(encoding="utf-8"))), encoding="utf-8")
    figure = plot_report(report)
    figure.savefig(paths["png"], dpi=120)
    plt.close(figure)
    return paths
