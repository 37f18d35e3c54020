"""silkfire.results: the statistics (worked examples), the per-item decompositions against the library's scores,
render_markdown on a hand-made report, and `silkfire report` end to end on a real MLflow store in tmp_path."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from silkfire import results as R

# ---- statistics --------------------------------------------------------------------------------------------------


def test_t_interval_worked_example() -> None:
    # mean 2, sd 1, t(0.975, df=2) = 4.302653: half-width 4.302653 / sqrt(3) = 2.484138
    cell = R.t_interval([1.0, 2.0, 3.0])
    assert cell["n"] == 3 and cell["mean"] == pytest.approx(2.0) and cell["sd"] == pytest.approx(1.0)
    assert cell["ci"] == pytest.approx([2 - 2.484138, 2 + 2.484138], abs=1e-5)


def test_t_interval_one_seed_has_no_interval() -> None:
    cell = R.t_interval([5.0])
    assert cell["ci"] is None and cell["mean"] == 5.0 and "no interval" in cell["note"]


def test_percentile_interval_worked_example() -> None:
    assert R.percentile_interval(np.arange(101)) == pytest.approx([2.5, 97.5])


def test_paired_bootstrap_constant_difference_gives_a_point_interval() -> None:
    # b = a + 1 item by item: every paired resample differs by exactly 1 (unpaired resampling would not).
    rng = np.random.default_rng(1)
    seeds = []
    for _ in range(3):
        a = rng.normal(size=(40, 1)) * 5
        seeds.append(R.Paired(a, a + 1))
    result = R.paired_bootstrap(seeds, R.mean_of(0), B=300, seed=0)
    assert result["mean"] == pytest.approx(1.0)
    assert result["ci"] == pytest.approx([1.0, 1.0])
    assert result["excludes_zero"] is True and result["items"] == [40, 40, 40]


def test_paired_bootstrap_resamples_seeds() -> None:
    # Seed 0 differs by 0 on every item, seed 1 by 2: a replicate's mean is 0, 1 or 2 (both seeds drawn once:
    # 1; seed 0 twice: 0, probability 1/4; seed 1 twice: 2, 1/4), so the 95% interval is [0, 2]. Resampling
    # items only would give [1, 1].
    a = np.zeros((10, 1))
    seeds = [R.Paired(a, a), R.Paired(a, a + 2)]
    result = R.paired_bootstrap(seeds, R.mean_of(0), B=2000, seed=3)
    assert result["per_seed"] == [0.0, 2.0] and result["mean"] == 1.0
    assert result["ci"] == [0.0, 2.0]
    assert result["excludes_zero"] is False


def test_paired_bootstrap_is_seeded_and_covers_the_truth() -> None:
    rng = np.random.default_rng(7)
    seeds = []
    for _ in range(4):
        a = rng.normal(size=(200, 1))
        seeds.append(R.Paired(a, a + 0.3 + rng.normal(size=(200, 1))))
    first = R.paired_bootstrap(seeds, R.mean_of(0), B=500, seed=11)
    assert first == R.paired_bootstrap(seeds, R.mean_of(0), B=500, seed=11)
    assert first["ci"] != R.paired_bootstrap(seeds, R.mean_of(0), B=500, seed=12)["ci"]
    low, high = first["ci"]
    assert low < 0.3 < high and low > 0  # the true difference is inside, and 800 items see it
    # about 2 * 1.96 * sd(diff) / sqrt(items) wide (sd 1, 800 items, plus a little seed-level spread)
    assert 0.6 * 0.139 < high - low < 2.0 * 0.139


def test_stratified_draws_keep_every_stratum_in_place() -> None:
    strata = np.array(["x", "x", "y", "y", "y", "z"])
    paired = R.Paired(np.zeros((6, 1)), np.zeros((6, 1)), strata)
    index = R.draw_indices(paired, np.random.default_rng(0), 50)
    assert index.shape == (50, 6)
    assert (strata[index] == strata[None, :]).all()
    assert len(np.unique(index[:, 2:5])) == 3  # draws within stratum y do vary


def test_hallucination_share_statistic() -> None:
    rows = np.array([[[0.0], [2.0], [3.0], [6.0]]])
    assert R.share_below(0, 3)(rows)[0] == 0.5 and R.mean_of(0)(rows)[0] == pytest.approx(11 / 4)


# ---- decompositions agree with the library -----------------------------------------------------------------------


def test_dialogue_components_reproduce_free_dialogue_metrics() -> None:
    from silkfire.fire.metrics import free_dialogue_metrics

    rng = random.Random(0)
    for _ in range(50):
        lists = [[rng.choice([None, *range(0, 11)]) for _ in range(rng.randint(1, 4))]
                 for _ in range(rng.randint(1, 12))]
        expected = free_dialogue_metrics(lists, threshold=8)
        rows = np.array([R.dialogue_components(scores, 8) for scores in lists])[None]
        for name, statistic in R.FREE_STATISTICS.items():
            assert statistic(rows)[0] == pytest.approx(expected[name]), (name, lists)


def test_mme_images_reproduce_score_mme() -> None:
    from silkfire.eval.mme import WORLD_CATEGORY_GROUPS, score_mme

    records = mme_records(random.Random(4), accuracy=0.6)
    codes = {c: i for i, c in enumerate(WORLD_CATEGORY_GROUPS)}
    expected = score_mme(records)
    for group in ("perception", "cognition"):
        assert R._mme_total(R.mme_images(records, codes), codes, group) == pytest.approx(expected[group])


def test_teacher_errors_reproduce_score_mae() -> None:
    from silkfire.fire.metrics import score_mae

    generated = ["Score: 5.\nFeedback: a", "no score here", "Score: 9.", "Score: 2."]
    references = ["Score: 7.\nFeedback: b", "Score: 3.", "Feedback: no score", "Score: 2."]
    errors = [R.teacher_error(g, r) for g, r in zip(generated, references)]
    assert errors == [2.0, 10.0, None, 0.0]
    assert score_mae(generated, references)["MAE"] == pytest.approx(12 / 3)


# ---- render_markdown -------------------------------------------------------------------------------------------


def hand_made_report() -> dict[str, Any]:
    return {
        "schema": 1, "sweep": "demo", "seeds": [0, 1],
        "measured": {"start": "2026-12-01T10:00:00+00:00", "end": "2026-12-01T12:00:00+00:00"},
        "git_commits": ["0123456789abcdef0123"], "machine": {"cpu": ["Test CPU"], "threads": ["2"],
                                                  "versions": [{"torch": "2.9.0", "numpy": "2.4.6"}]},
        "statistics": {"confidence": 0.95, "over_seeds": "mean, Student-t interval", "differences": "two-level",
                       "B": 2000, "bootstrap_seed": 0},
        "runs": [],
        "tables": [{"title": "Silkie: SFT vs DPO (test)", "columns": ["sft", "dpo"], "note": "a note",
                    "rows": [{"metric": "MMHal-style score (0-6)", "cells": {
                        "sft": {"per_seed": [2.0, 3.0], "mean": 2.5, "ci": [-3.853, 8.853]},
                        "dpo": {"per_seed": [4.0], "mean": 4.0, "ci": None}}}]}],
        "differences": [{"name": "DPO - SFT: MMHal-style score (0-6)", "mean": 1.25, "ci": [0.5, 2.0],
                         "per_seed": [1.0, 1.5], "excludes_zero": True, "items": [16, 16], "unit": "items"},
                        {"name": "FIRE - SFT baseline: AT", "mean": -0.1, "ci": [-0.4, 0.2], "unpaired": [0, 2],
                         "per_seed": [-0.1, -0.1], "excludes_zero": False, "items": [8, 8], "unit": "dialogues"}],
        "checks": [{"seed": 0, "stage": "evaluate_dpo", "metric": "sft.mmhal_score", "logged": 2.0,
                    "recomputed": 2.0, "agree": True},
                   {"seed": 1, "stage": "evaluate_dpo", "metric": "dpo.mmhal_score", "logged": 4.5,
                    "recomputed": 4.0, "agree": False}],
    }


def test_render_markdown_of_a_hand_made_report() -> None:
    text = R.render_markdown(hand_made_report())
    assert "### Results: sweep `demo`" in text
    assert "Seeds 0, 1 (n = 2)" in text and "`0123456789ab`" in text
    assert "CPU Test CPU, threads 2; numpy 2.4.6, torch 2.9.0." in text
    assert "| MMHal-style score (0-6) | 2.500 [-3.853, 8.853] | 4.000 no CI (n=1) |" in text
    assert "| DPO - SFT: MMHal-style score (0-6) | 1.250 | [0.500, 2.000] | 1.000, 1.500 | yes | 16, 16 items |" in text
    assert "| no | 8, 8 dialogues (2 unpaired left out) |" in text
    assert "- DPO - SFT: MMHal-style score (0-6): 1.250, 95% CI [0.500, 2.000] excludes 0." in text
    assert "- FIRE - SFT baseline: AT: -0.100, 95% CI [-0.400, 0.200] includes 0 (no difference shown" in text
    assert "1 of 2 logged stage metrics agree" in text and "seed 1 evaluate_dpo dpo.mmhal_score logged 4.500" in text


def test_readme_block_round_trip() -> None:
    report = hand_made_report()
    readme = f"# Title\n\nintro\n\n{R.REPORT_BEGIN}\nold results\n{R.REPORT_END}\n\nafter\n"
    assert not R.readme_block_matches(readme, report)
    updated = R.replace_readme_block(readme, report)
    assert R.readme_block_matches(updated, report)
    assert updated.startswith("# Title\n\nintro\n\n") and updated.endswith(f"{R.REPORT_END}\n\nafter\n")
    report["differences"][0]["mean"] = 1.5  # the JSON changed, the README did not
    assert not R.readme_block_matches(updated, report)
    assert not R.readme_block_matches("no markers", report)
    with pytest.raises(R.ReportError, match="markers"):
        R.replace_readme_block("no markers", report)


# ---- fixtures: per-item artefacts in the stages' formats ---------------------------------------------------------
MME_CATEGORIES = ("existence", "count", "comparison")


def mme_records(rng: random.Random, accuracy: float, images: int = 5) -> list[dict[str, Any]]:
    records = []
    for category in MME_CATEGORIES:
        for image in range(images):
            for answer in ("Yes", "No"):
                right = rng.random() < accuracy
                prediction = answer if right else ("No" if answer == "Yes" else "Yes")
                records.append({"question_id": f"scene{image}/{category}", "category": category,
                                "question": f"q {answer}?", "answer": answer, "prediction": prediction})
    return records


def mmhal_items(rng: random.Random, mean: float, count: int = 16) -> list[dict[str, Any]]:
    types = ("attribute", "adversarial", "comparison", "counting", "relation", "environment", "holistic", "other")
    return [{"item_id": f"scene{i}/{types[i % 8]}", "image_id": f"scene{i}", "question_type": types[i % 8],
             "question": f"question {i}?", "gt_answer": "x", "model_answer": "y",
             "rating": max(0, min(6, round(rng.gauss(mean, 1.5))))} for i in range(count)]


def fire_records(rng: random.Random, good: float, count: int = 10) -> list[dict[str, Any]]:
    records = []
    for i in range(count):
        scores = []
        for _ in range(4):
            scores.append(min(10, rng.randint(2, 7) + (3 if rng.random() < good else 0)))
            if scores[-1] >= 8:
                break
        turns = []
        for score in scores:
            turns += [{"role": "student", "type": "response", "value": f"Answer: {score}"},
                      {"role": "teacher", "type": "feedback", "value": f"Score: {score}.\nFeedback: look again."}]
        records.append({"image": f"images/{i}.png", "question": {"role": "user", "value": f"How many {i}?"},
                        "conversations": turns, "groundtruth": {"role": "user", "value": "3"}, "source": "world",
                        "round": len(scores), "score": scores})
    return records


def fixed_rows(rng: random.Random, noise: int, count: int = 12) -> list[dict[str, Any]]:
    rows = []
    for i in range(count):
        truth = rng.randint(1, 10)
        generated = "no score" if rng.random() < 0.1 * noise else f"Score: {max(1, truth - rng.randint(0, noise))}."
        rows.append({"dialogue": i // 2, "turn": 1 + 2 * (i % 2), "role": "teacher", "image": f"images/{i}.png",
                     "question": "q", "reference": f"Score: {truth}.\nFeedback: f", "generated": generated})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def seed_files(folder: Path, seed: int, val_accuracy: float = 0.7) -> dict[str, dict[str, Path]]:
    """Every per-item file of one seed, as the stages write them (paths relative to their artefact root).

    val_accuracy 1.0: val perception 400 (existence and count at 200 each: just left the plateau); 0.0: 0."""
    rng = random.Random(seed)
    files = {"evaluate": {}, "evaluate_dpo": {}, "fire_bench": {}}
    for label, accuracy in (("sft", 0.8), ("base", 0.5), ("blind", 0.55)):
        files["evaluate"][f"predictions/mme_predictions_{label}.jsonl"] = write_jsonl(
            folder / "evaluate" / f"mme_predictions_{label}.jsonl", mme_records(rng, accuracy))
    files["evaluate"]["predictions/val/mme_predictions_sft.jsonl"] = write_jsonl(
        folder / "evaluate" / "val" / "mme_predictions_sft.jsonl", mme_records(rng, val_accuracy, images=3))
    for label, accuracy, mean in (("sft", 0.75, 3.0), ("dpo", 0.8, 4.5)):
        files["evaluate_dpo"][f"predictions/mme_predictions_{label}.jsonl"] = write_jsonl(
            folder / "evaluate_dpo" / f"mme_predictions_{label}.jsonl", mme_records(rng, accuracy))
        files["evaluate_dpo"][f"predictions/mmhal_rated_{label}.jsonl"] = write_jsonl(
            folder / "evaluate_dpo" / f"mmhal_rated_{label}.jsonl", mmhal_items(rng, mean))
    for label, good in (("sft", 0.2), ("fire", 0.6)):
        files["fire_bench"][f"fire_bench/free_oracle_{label}.jsonl"] = write_jsonl(
            folder / "fire" / f"free_oracle_{label}.jsonl", fire_records(rng, good))
    for label, noise in (("sft", 4), ("teacher", 1)):
        files["fire_bench"][f"fire_bench/fixed_teacher_{label}.jsonl"] = write_jsonl(
            folder / "fire" / f"fixed_teacher_{label}.jsonl", fixed_rows(rng, noise))
    # the val split of the branches: the same layout one folder down (smaller sets)
    for label, accuracy, mean in (("sft", 0.7, 3.0), ("dpo", 0.75, 4.0)):
        files["evaluate_dpo"][f"predictions/val/mme_predictions_{label}.jsonl"] = write_jsonl(
            folder / "evaluate_dpo" / "val" / f"mme_predictions_{label}.jsonl", mme_records(rng, accuracy, 3))
        files["evaluate_dpo"][f"predictions/val/mmhal_rated_{label}.jsonl"] = write_jsonl(
            folder / "evaluate_dpo" / "val" / f"mmhal_rated_{label}.jsonl", mmhal_items(rng, mean, 8))
    for label, good in (("sft", 0.3), ("fire", 0.5)):
        files["fire_bench"][f"fire_bench/val/free_oracle_{label}.jsonl"] = write_jsonl(
            folder / "fire" / "val" / f"free_oracle_{label}.jsonl", fire_records(rng, good, 6))
    for label, noise in (("sft", 3), ("teacher", 1)):
        files["fire_bench"][f"fire_bench/val/fixed_teacher_{label}.jsonl"] = write_jsonl(
            folder / "fire" / "val" / f"fixed_teacher_{label}.jsonl", fixed_rows(rng, noise, 6))
    return files


def logged_metrics(files: dict[str, dict[str, Path]]) -> dict[str, dict[str, float]]:
    """What each stage logs, computed here with the library (as the stages do)."""
    from silkfire.eval.mme import score_mme_file
    from silkfire.eval.mmhal import score_mmhal_file
    from silkfire.fire.metrics import score_fire_file, score_mae
    from silkfire.io import read_records

    out: dict[str, dict[str, float]] = {"evaluate": {}, "evaluate_dpo": {}, "fire_bench": {}}
    for label in ("sft", "base", "blind"):
        scores = score_mme_file(files["evaluate"][f"predictions/mme_predictions_{label}.jsonl"])
        out["evaluate"] |= {f"mme.{label}.perception": scores["perception"],
                            f"mme.{label}.cognition": scores["cognition"]}
    val = score_mme_file(files["evaluate"]["predictions/val/mme_predictions_sft.jsonl"])
    out["evaluate"] |= {"val.mme.sft.perception": val["perception"], "val.mme.sft.cognition": val["cognition"]}
    for folder, prefix in (("", ""), ("val/", "val.")):
        for label in ("sft", "dpo"):
            mmhal = score_mmhal_file(files["evaluate_dpo"][f"predictions/{folder}mmhal_rated_{label}.jsonl"])
            mme = score_mme_file(files["evaluate_dpo"][f"predictions/{folder}mme_predictions_{label}.jsonl"])
            out["evaluate_dpo"] |= {f"{prefix}{label}.mmhal_score": mmhal["score"],
                                    f"{prefix}{label}.hallucination_rate": mmhal["hallucination_rate"],
                                    f"{prefix}{label}.mme_perception": mme["perception"]}
        for label in ("sft", "fire"):
            free = score_fire_file(files["fire_bench"][f"fire_bench/{folder}free_oracle_{label}.jsonl"], threshold=8)
            out["fire_bench"] |= {f"{prefix}free.oracle.{label}.{k}": free[k] for k in ("AT", "ADR", "ATR", "RR")}
        for label in ("sft", "teacher"):
            rows = read_records(files["fire_bench"][f"fire_bench/{folder}fixed_teacher_{label}.jsonl"])
            out["fire_bench"][f"{prefix}fixed.teacher.{label}.MAE"] = score_mae(
                [r["generated"] for r in rows], [r["reference"] for r in rows])["MAE"]
    out["fire_bench"]["free.oracle.sft.threshold"] = 8.0
    return out


VERSIONS = {"torch": "2.9.0", "transformers": "4.57.0"}


def log_stage(mlflow: Any, stage: str, files: dict[str, Path], metrics: dict[str, float], *,
              nested: bool = True, skip: str | None = None) -> str:
    with mlflow.start_run(run_name=stage, nested=nested, tags={"silkfire.stage": stage}) as run:
        mlflow.log_metrics(metrics)
        for relative, path in files.items():
            if relative != skip:
                mlflow.log_artifact(str(path), artifact_path=str(Path(relative).parent))
    return run.info.run_id


def pipeline_run(mlflow: Any, sweep: str, sweep_id: str, seed: int, folder: Path, *, status: str = "FINISHED",
                 cached_evaluate: bool = False, wrong_metric: bool = False, skip: str | None = None,
                 branches: tuple[str, ...] = ("silkie", "fire"), val_accuracy: float = 0.7) -> str:
    """A pipeline run of the sweep; branches=() is a foundation-only pipeline (no evaluate_dpo, no fire_bench)."""
    files = seed_files(folder / f"seed{seed}", seed, val_accuracy)
    logged = logged_metrics(files)
    if wrong_metric:
        logged["evaluate_dpo"]["dpo.mmhal_score"] += 1.0
    producer = None
    if cached_evaluate:  # an earlier pipeline run produced evaluate's outputs; this one only records a pointer
        producer = log_stage(mlflow, "evaluate", files["evaluate"], logged["evaluate"], nested=False)
    tags = {"silkfire.kind": "pipeline", "silkfire.sweep": sweep, "mlflow.parentRunId": sweep_id,
            "silkfire.seed": str(seed), "silkfire.cpu": "Test CPU", "silkfire.threads": "2",
            "silkfire.versions": json.dumps(VERSIONS), "silkfire.git_commit": "abc123def4567890"}
    with mlflow.start_run(run_name=f"pipeline · seed {seed}", tags=tags) as run:
        mlflow.log_params({"seed": seed, "pipeline.branches": str(list(branches))})
        stages = {"silkie": "evaluate_dpo", "fire": "fire_bench"}
        for stage in ("generate", "sft", "evaluate", *(stages[branch] for branch in branches)):
            if stage == "evaluate" and producer:
                with mlflow.start_run(run_name="evaluate (cached)", nested=True,
                                      tags={"silkfire.stage": "evaluate", "silkfire.cached": "true",
                                            "silkfire.produced_by": producer}):
                    pass
            elif stage in files:
                log_stage(mlflow, stage, files[stage], logged[stage], skip=skip)
            else:
                with mlflow.start_run(run_name=stage, nested=True, tags={"silkfire.stage": stage}):
                    pass
    if status != "FINISHED":
        mlflow.MlflowClient().set_terminated(run.info.run_id, status)
    return run.info.run_id


def make_sweep(mlflow: Any, name: str, seeds: str) -> str:
    with mlflow.start_run(run_name=f"sweep seed={seeds}", tags={"silkfire.sweep": name}) as run:
        mlflow.log_params({"seed": 0, "sweep.seed": seeds})
    return run.info.run_id


@pytest.fixture()
def store(mlflow_root: Path) -> Any:
    import mlflow

    from silkfire.tracking.store import configure

    configure(mlflow_root, "silkfire-test")
    return mlflow


# ---- end to end ----------------------------------------------------------------------------------------------------


def test_report_end_to_end(store: Any, mlflow_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from silkfire.eval.mmhal import score_mmhal_file
    from silkfire.fire.metrics import score_fire_file

    mlflow = store
    sweep_id = make_sweep(mlflow, "seeds", "0,1")
    # seed 0 first failed, then ran again: the FINISHED run counts
    pipeline_run(mlflow, "seeds", sweep_id, 0, tmp_path / "failed", status="FAILED")
    pipeline_run(mlflow, "seeds", sweep_id, 0, tmp_path / "runs")
    pipeline_run(mlflow, "seeds", sweep_id, 1, tmp_path / "runs", cached_evaluate=True, wrong_metric=True)
    client = mlflow.MlflowClient()

    report = R.build_report(client, "seeds", B=300)
    assert report["seeds"] == [0, 1]
    assert report["machine"] == {"cpu": ["Test CPU"], "cpu_count": [], "threads": ["2"], "python": [],
                                 "versions": [VERSIONS]}
    assert report["git_commits"] == ["abc123def4567890"]
    assert all(set(run["stages"]) == {"evaluate", "evaluate_dpo", "fire_bench"} for run in report["runs"])

    splits = [(t["split"], t["title"].split(":")[0]) for t in report["tables"]]
    assert splits == [(split, title) for split in ("test", "val")
                      for title in ("Foundation", "Silkie", "FIRE free dialogue, oracle teacher",
                                    "FIRE fixed dialogue")]
    val = report["tables"][4]
    assert val["columns"] == ["sft"] and val["rows"][-2]["metric"] == "**perception (total)**"
    val_rr = next(d for d in report["differences"] if d["key"] == "val.fire.RR")
    assert val_rr["split"] == "val" and val_rr["items"] == [6, 6] and val_rr["name"].endswith("(val)")
    # val has no base/blind runs: no foundation difference there
    assert not any(d["key"].startswith("val.foundation") for d in report["differences"])
    # per-seed values are the library's scores of each seed's files
    silkie = next(t for t in report["tables"] if t["title"].startswith("Silkie"))
    score_row = next(r for r in silkie["rows"] if r["metric"].startswith("MMHal"))
    expected = [score_mmhal_file(tmp_path / "runs" / f"seed{s}" / "evaluate_dpo" / "mmhal_rated_dpo.jsonl")["score"]
                for s in (0, 1)]
    assert score_row["cells"]["dpo"]["per_seed"] == pytest.approx(expected)
    assert score_row["cells"]["dpo"]["mean"] == pytest.approx(sum(expected) / 2)
    assert score_row["cells"]["dpo"]["ci"] is not None

    rr = next(d for d in report["differences"] if d["key"] == "fire.RR")
    assert rr["split"] == "test" and rr["name"] == "FIRE - SFT baseline: RR (test)"
    free = [{label: score_fire_file(tmp_path / "runs" / f"seed{s}" / "fire" / f"free_oracle_{label}.jsonl")
             for label in ("sft", "fire")} for s in (0, 1)]
    assert rr["per_seed"] == pytest.approx([f["fire"]["RR"] - f["sft"]["RR"] for f in free])
    assert rr["ci"][0] <= rr["mean"] <= rr["ci"][1] and rr["items"] == [10, 10] and rr["unpaired"] == [0, 0]
    keys = {d["key"] for d in report["differences"]}
    assert {"silkie.mmhal_score", "silkie.hallucination_rate", "silkie.mme_perception", "fire.AT", "fire.ADR",
            "fire.ATR", "fire.teacher_mae", "foundation.sft_minus_blind.mme_perception",
            "val.silkie.mmhal_score", "val.fire.teacher_mae"} <= keys

    # every logged stage metric was checked; only the planted wrong one disagrees
    bad = [c for c in report["checks"] if not c["agree"]]
    assert [(c["seed"], c["metric"]) for c in bad] == [(1, "dpo.mmhal_score")]
    # per seed: evaluate 6 (test) + 2 (val), evaluate_dpo 6 + 6, fire_bench 10 + 10
    assert len(report["checks"]) == 2 * (6 + 2 + 6 + 6 + 10 + 10)
    # the cached evaluate of seed 1 was followed to the run that made its outputs
    seed1 = next(r for r in report["runs"] if r["seed"] == 1)
    assert client.get_run(seed1["stages"]["evaluate"]).info.run_name == "evaluate"

    # the command: files, README block, markdown rendered from the written JSON
    import silkfire.cli as cli

    monkeypatch.setattr(cli, "_tracking_client", lambda: client)
    readme = tmp_path / "README.md"
    readme.write_text(f"# R\n\n{R.REPORT_BEGIN}\n{R.REPORT_END}\n", encoding="utf-8")
    out = tmp_path / "results" / "seeds"
    assert cli.main(["report", "--sweep", "seeds", "--out", str(out), "--readme", str(readme),
                     "--bootstrap", "200"]) == 0
    written = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert (out / "report.md").read_text(encoding="utf-8") == R.render_markdown(written)
    assert R.readme_block_matches(readme.read_text(encoding="utf-8"), written)
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert written["statistics"]["B"] == 200
    assert f"- {rr['name']}: " in (out / "report.md").read_text(encoding="utf-8")


def test_report_names_a_failed_and_a_missing_seed(store: Any, tmp_path: Path) -> None:
    mlflow = store
    sweep_id = make_sweep(mlflow, "broken", "0,1,2")
    pipeline_run(mlflow, "broken", sweep_id, 0, tmp_path)
    failed = pipeline_run(mlflow, "broken", sweep_id, 1, tmp_path, status="FAILED")
    with pytest.raises(R.ReportError) as caught:
        R.build_report(mlflow.MlflowClient(), "broken", B=50)
    message = str(caught.value)
    assert f"seed 1: no FINISHED pipeline run ({failed} FAILED)" in message
    assert "seed 2: no pipeline run in the sweep" in message
    assert "seed 0" not in message


def test_report_names_a_stage_without_artefacts(store: Any, tmp_path: Path) -> None:
    mlflow = store
    sweep_id = make_sweep(mlflow, "partial", "0")
    pipeline_run(mlflow, "partial", sweep_id, 0, tmp_path, skip="predictions/mmhal_rated_dpo.jsonl")
    with pytest.raises(R.ReportError, match=r"stage evaluate_dpo run \w+ has no artefact "
                                            r"predictions/mmhal_rated_dpo.jsonl"):
        R.build_report(mlflow.MlflowClient(), "partial", B=50)


def test_report_without_runs(store: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import silkfire.cli as cli

    with pytest.raises(R.ReportError, match="no pipeline runs tagged silkfire.sweep='nothing'"):
        R.build_report(store.MlflowClient(), "nothing")
    monkeypatch.setattr(cli, "_tracking_client", lambda: store.MlflowClient())
    assert cli.main(["report", "--sweep", "nothing"]) == 2
    assert capsys.readouterr().err.startswith("error: no pipeline runs tagged silkfire.sweep='nothing'")


def test_one_seed_report_says_there_is_no_interval(store: Any, tmp_path: Path) -> None:
    mlflow = store
    pipeline_run(mlflow, "single", make_sweep(mlflow, "single", "0"), 0, tmp_path)
    report = R.build_report(mlflow.MlflowClient(), "single", B=100)
    text = R.render_markdown(report)
    assert "no CI (n=1)" in text and "resamples items only" in text
    paths = R.write_report(report, tmp_path / "out")  # the figure draws a mean without an interval too
    assert paths["png"].stat().st_size > 0 and paths["md"].read_text(encoding="utf-8") == text
    assert all(not math.isnan(d["mean"]) and d["ci"] is not None for d in report["differences"])


def test_a_missing_val_file_drops_that_val_table_only(store: Any, tmp_path: Path) -> None:
    mlflow = store
    pipeline_run(mlflow, "oldval", make_sweep(mlflow, "oldval", "0"), 0, tmp_path,
                 skip="predictions/val/mmhal_rated_dpo.jsonl")
    report = R.build_report(mlflow.MlflowClient(), "oldval", B=50)
    titles = [t["title"].split(":")[0] + " " + t["split"] for t in report["tables"]]
    assert "Silkie val" not in titles and "Silkie test" in titles and "FIRE fixed dialogue val" in titles
    assert not any(d["key"].startswith("val.silkie") for d in report["differences"])
    assert any(d["key"] == "val.fire.RR" for d in report["differences"])


# ---- several sweeps, the plateau ---------------------------------------------------------------------------------


def test_several_sweeps_merge_foundation_only_seeds(store: Any, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow = store
    full = make_sweep(mlflow, "seeds", "0,1,2")
    for seed in (0, 1, 2):
        pipeline_run(mlflow, "seeds", full, seed, tmp_path / "full", val_accuracy=1.0)
    foundation = make_sweep(mlflow, "foundation-seeds", "2,3")
    newer = pipeline_run(mlflow, "foundation-seeds", foundation, 2, tmp_path / "found", branches=(),
                         val_accuracy=1.0)  # seed 2 again, later, foundation only: this run counts
    pipeline_run(mlflow, "foundation-seeds", foundation, 3, tmp_path / "found", branches=(), val_accuracy=0.0)
    client = mlflow.MlflowClient()

    report = R.build_report(client, ["seeds", "foundation-seeds"], B=100)
    assert report["seeds"] == [0, 1, 2, 3] and report["sweep"] == "seeds + foundation-seeds"
    assert report["sweeps"] == [{"name": "seeds", "seeds": [0, 1, 2], "branches": ["silkie", "fire"]},
                                {"name": "foundation-seeds", "seeds": [2, 3], "branches": []}]
    assert report["duplicates"] == [{"seed": 2, "sweeps": ["seeds", "foundation-seeds"],
                                     "used_sweep": "foundation-seeds", "used_run_id": newer}]
    assert next(r for r in report["runs"] if r["seed"] == 2)["run_id"] == newer
    # foundation tables: every seed; branch tables and differences: the seeds that ran the branch
    for table in report["tables"]:
        expected = [0, 1, 2, 3] if table["title"].startswith("Foundation") else [0, 1]
        assert (table["n"], table["seeds"]) == (len(expected), expected), table["title"]
        for row in table["rows"]:
            assert all(len(cell["per_seed"]) == len(expected) for cell in row["cells"].values())
    assert {t["title"].split(":")[0] for t in report["tables"]} == {
        "Foundation", "Silkie", "FIRE free dialogue, oracle teacher", "FIRE fixed dialogue"}
    for diff in report["differences"]:
        expected = [0, 1, 2, 3] if "foundation" in diff["key"] else [0, 1]
        assert diff["seeds"] == expected and diff["n_seeds"] == len(expected), diff["key"]
    assert report["omitted"] == []
    text = R.render_markdown(report)
    assert "### Results: sweeps `seeds` + `foundation-seeds`" in text
    assert "Sweeps: `seeds`: seeds 0, 1, 2 (branches silkie, fire); `foundation-seeds`: seeds 2, 3 " \
           "(foundation only)." in text
    assert f"Seed 2 is in sweeps `seeds`, `foundation-seeds`: its newest finished run is used (sweep " \
           f"`foundation-seeds`, run `{newer[:12]}`)." in text
    assert "n = 4 seeds (0, 1, 2, 3)." in text and "n = 2 seeds (0, 1)." in text
    assert "| 2 (0, 1) |" in text and "| 4 (0, 1, 2, 3) |" in text  # the differences' n

    # the plateau: seed 3's val perception is 0 (< 400): "no"; the others are at 400 exactly: "yes"
    plateau = report["plateau"]
    assert [(row["seed"], row["val_perception"], row["left"]) for row in plateau["rows"]] == [
        (0, 400.0, True), (1, 400.0, True), (2, 400.0, True), (3, 0.0, False)]
    assert (plateau["k"], plateau["n"], plateau["threshold"]) == (3, 4, R.PLATEAU_THRESHOLD)
    assert plateau["test_perception"]["n"] == 4
    assert plateau["test_spread"] == [min(plateau["test_perception"]["per_seed"]),
                                      max(plateau["test_perception"]["per_seed"])]
    assert "| 3 | 0.0 |" in text and "| no |" in text
    assert "Left the plateau on 3 of 4 seeds (failure rate 1/4)." in text
    assert "VAL MME-style perception (SFT) is >= 400 (twice the constant answer" in text

    # a report of foundation-only seeds: the branch tables are left out with one line each, not an error
    alone = R.build_report(client, "foundation-seeds", B=50)
    assert [t["title"].split(":")[0] for t in alone["tables"]] == ["Foundation", "Foundation"]
    assert not any(d["key"].startswith(("silkie", "fire", "val.silkie", "val.fire")) for d in alone["differences"])
    assert len(alone["omitted"]) == 2 and "none of seeds 2, 3 ran the silkie branch" in alone["omitted"][0]
    assert alone["omitted"][1] in R.render_markdown(alone)

    # the command: --sweep twice, --plateau-threshold
    import silkfire.cli as cli

    monkeypatch.setattr(cli, "_tracking_client", lambda: client)
    out = tmp_path / "results" / "seeds"
    assert cli.main(["report", "--sweep", "seeds", "--sweep", "foundation-seeds", "--out", str(out),
                     "--bootstrap", "50", "--plateau-threshold", "0"]) == 0
    written = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert written["plateau"]["k"] == 4 and written["plateau"]["threshold"] == 0.0
    assert (out / "report.md").read_text(encoding="utf-8") == R.render_markdown(written)


def test_plateau_of_hand_made_seeds() -> None:
    def seed(number: int, val: float | None, test: float, blind: float) -> R.SeedData:
        mme = {"test": {"sft": {"scores": {"perception": test}}, "blind": {"scores": {"perception": blind}}}}
        if val is not None:
            mme["val"] = {"sft": {"scores": {"perception": val}}}
        return R.SeedData(number, mme)

    result = R.plateau([seed(0, 620.0, 600.0, 231.0), seed(1, 399.9, 380.0, 229.0), seed(2, None, 500.0, 230.0)])
    assert [row["left"] for row in result["rows"]] == [True, False, None]
    assert (result["k"], result["n"], result["undecided"]) == (1, 2, [2])
    assert result["test_spread"] == [380.0, 600.0] and result["test_perception"]["mean"] == pytest.approx(1480 / 3)
    report = {**hand_made_report(), "plateau": result}
    text = R.render_markdown(report)
    assert "#### Foundation learns on every seed (SFT; n = 3 seeds)" in text
    assert "| 1 | 399.9 | 380.0 | 229.0 | no |" in text and "| 0 | 620.0 | 600.0 | 231.0 | yes |" in text
    assert "Left the plateau on 1 of 2 seeds (failure rate 1/2); undecided (no val perception): seeds 2." in text
    assert "spread 380.0 to 600.0 (max - min 220.0); mean 493.3 [" in text
    assert "plateau" not in R.render_markdown(hand_made_report())  # an older report.json: no section
