"""Stage `fire_bench`: FIRE-Bench on the held-out dialogues (silkfire.fire.bench).

- Fixed dialogue: the SFT-only baseline and the FIRE student write the refined student turns of the held-out
  dialogues (BLEU-1..4, CIDEr vs the reference turn); the baseline and the trained teacher write the teacher turns
  (BLEU/CIDEr and the score MAE against the oracle teacher's turns).
- Free dialogue: both students converse with each teacher of ``fire.bench.teachers`` (``oracle`` = ``fire.teacher``,
  ``trained`` = the fire_teacher stage's model) for up to ``max_turns`` turns: AT, ADR, ATR, RR, AT normalised to the
  baseline.

Both held-out splits are evaluated the same way (:func:`evaluate_split`): test (the final figures, at the top level
of the metrics as before) and val (under the key ``val``: what choices are made on; ``null`` when there are no val
dialogues, as with published FIRE and no ``fire.dialogues.published.val_file``).

Outputs: <reports>/fire_bench/{fire_bench.md, free_<teacher>_<model>.jsonl, fixed_<role>_<model>.jsonl} for test,
the same under <reports>/fire_bench/val/ for val; the tables go to MLflow (the flow also publishes the test table
as the Prefect markdown artefact `silkfire-fire-bench`), every number to metrics/fire_bench.json.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from silkfire.stages import Dep, Out

PARAMS = (
    "fire.seed", "fire.bench", "fire.dialogues.stop_score", "fire.sft.teacher_instruction", "fire.teacher", "world",
    "runtime",
    "paths.world", "paths.reports", "paths.fire", "paths.sft", "paths.fire_student", "paths.fire_teacher",
)
DEPS = (
    Dep("${paths.fire}/dialogues",
        "test and val dialogues: both splits are benchmarked"),
    Dep("${paths.reports}/validate_dialogues/verdict.json",
        "their gated copies (md5s)"),
    Dep("${paths.world}"),
    Dep("${paths.sft}"),
    Dep("${paths.fire_student}"),
    Dep("${paths.fire_teacher}"),
)
OUTS = (
    Out("${paths.reports}/fire_bench",
        note="test files at the top, val files under val/"),
)
TEACHERS = ("oracle", "trained")
TABLE = "fire_bench.md"
VAL_DIR = "val"  # the val split's files, beside the test split's (which keep their places)


def report_dir(cfg: DictConfig, root: Path) -> Path:
    return root / cfg.paths.reports / "fire_bench"


def models(cfg: DictConfig, root: Path) -> dict[str, Path]:
    """The compared model folders: the baseline (SFT only) and the FIRE-trained ones."""
    return {"sft": root / cfg.paths.sft / "model", "fire": root / cfg.paths.fire_student / "model",
            "teacher": root / cfg.paths.fire_teacher / "model"}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    from silkfire.io import write_jsonl

    write_jsonl(path, rows)


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    from silkfire.runtime import from_config, oom_hint

    runtime = from_config(cfg)  # a GPU asked for and missing fails here, before any work
    knobs = {"fire.bench.batch_size": cfg.fire.bench.batch_size}
    if cfg.fire.teacher.get("kind") == "trained":
        knobs["fire.teacher.batch_size"] = cfg.fire.teacher.batch_size
    with oom_hint("fire_bench", knobs, runtime=runtime):
        return _run(cfg, root, runtime)


@dataclass(frozen=True)
class Bench:
    """What every split's evaluation shares: the config, the compared models, generation options, the world."""
    cfg: DictConfig
    root: Path
    folders: dict[str, Path]
    options: Any  # bench.GenerationOptions
    world: Path
    scenes: dict[str, Any]
    seed: int
    stop: float


def _run(cfg: DictConfig, root: Path, runtime: Any) -> dict[str, Any]:
    import logging
    import shutil

    import mlflow

    from silkfire.fire import bench
    from silkfire.io import read_records
    from silkfire.artefacts import gated_dialogues

    settings = cfg.fire.bench
    stop = float(cfg.fire.dialogues.stop_score if settings.get("stop_score") is None else settings.stop_score)
    unknown = sorted(set(settings.teachers) - set(TEACHERS))
    if unknown:
        raise ValueError(f"fire.bench.teachers: unknown {unknown}; choose from {list(TEACHERS)}")
    if settings.baseline != "sft":
        raise ValueError(f"fire.bench.baseline must name a compared student (sft), got {settings.baseline!r}")
    world = root / cfg.paths.world
    out = report_dir(cfg, root)
    out.mkdir(parents=True, exist_ok=True)
    folders = models(cfg, root)
    for name, folder in folders.items():
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"fire_bench: model {name} not found at {folder} (run the earlier stages first)")
    options = bench.GenerationOptions(
        batch_size=int(settings.batch_size), student_max_new_tokens=int(settings.student_max_new_tokens),
        teacher_max_new_tokens=int(settings.teacher_max_new_tokens), dtype=runtime.dtype, device=runtime.device,
        progress=bool(settings.progress), teacher_instruction=str(cfg.fire.sft.teacher_instruction))
    scenes = {record["image"]: record for record in read_records(world / "scenes.jsonl")}
    setup = Bench(cfg, root, folders, options, world, scenes, int(cfg.fire.seed), stop)

    # test first, exactly as before val existed: its figures stay at the top level of the metrics
    metrics = evaluate_split(setup, "test", gated_dialogues(cfg, root, "test"), out)
    val_file = gated_dialogues(cfg, root, "val")
    if val_file.is_file():
        metrics["val"] = evaluate_split(setup, "val", val_file, out / VAL_DIR)
    else:  # published FIRE has no val split unless fire.dialogues.published.val_file names one
        logging.getLogger(__name__).warning("fire_bench: no val dialogues (%s): FIRE-Bench on test only", val_file)
        shutil.rmtree(out / VAL_DIR, ignore_errors=True)  # an earlier run's val files must not look current
        metrics["val"] = None
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    mlflow.log_artifacts(str(out), artifact_path="fire_bench")
    return metrics


def evaluate_split(setup: Bench, split: str, path: Path, out: Path) -> dict[str, Any]:
    """FIRE-Bench on one split's dialogues (fixed and free dialogue): its metrics, its per-item files and table
    under ``out``."""
    import mlflow

    from silkfire.fire import bench
    from silkfire.fire.records import read_dialogues

    settings = setup.cfg.fire.bench
    out.mkdir(parents=True, exist_ok=True)
    dialogues, _ = read_dialogues(path)
    metrics: dict[str, Any] = {f"{split}_dialogues": len(dialogues)}
    fixed_students, fixed_teachers = _fixed_dialogue(setup, dialogues, out)
    metrics["fixed"] = {"student": fixed_students, "teacher": fixed_teachers}
    metrics["free"] = free = _free_dialogue(setup, dialogues, out)
    title = "FIRE-Bench" if split == "test" else f"FIRE-Bench ({split} split)"
    table = bench.comparison_markdown(free, fixed_students, fixed_teachers, str(settings.baseline), title=title)
    (out / TABLE).write_text(table, encoding="utf-8")
    mlflow.log_text(table, f"fire_bench/{TABLE}" if split == "test" else f"fire_bench/{split}/{TABLE}")
    return metrics


def _fixed_dialogue(setup: Bench, dialogues: list[Any], out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fixed dialogue: the students' refined turns and the teachers' turns vs the references (scores per model)."""
    from silkfire.fire import bench

    fixed_items = setup.cfg.fire.bench.get("fixed_items")
    limit = None if fixed_items is None else int(fixed_items)
    s_items = bench.student_items(dialogues, limit, setup.seed)
    t_items = bench.teacher_items(dialogues, limit, setup.seed)
    fixed_students: dict[str, Any] = {}
    fixed_teachers: dict[str, Any] = {}
    for name in ("sft", "fire"):
        student = bench.model_student(setup.folders[name], setup.options, name)
        if s_items:
            generated, scores = bench.fixed_student(student, s_items, setup.world)
            fixed_students[name] = scores
            _write_jsonl(out / f"fixed_student_{name}.jsonl", _fixed_rows(s_items, generated))
        del student
        gc.collect()
    for name, folder in (("sft", setup.folders["sft"]), ("teacher", setup.folders["teacher"])):
        teacher_model = bench.model_teacher(folder, setup.options, name)
        generated, scores = bench.fixed_teacher(teacher_model, t_items, setup.world, setup.scenes)
        fixed_teachers[name] = scores
        _write_jsonl(out / f"fixed_teacher_{name}.jsonl", _fixed_rows(t_items, generated))
        del teacher_model
        gc.collect()
    return fixed_students, fixed_teachers


def _free_dialogue(setup: Bench, dialogues: list[Any], out: Path) -> dict[str, Any]:
    """Free dialogue: both students with each teacher of ``fire.bench.teachers`` (results per teacher)."""
    from silkfire.fire import bench
    from silkfire.fire.records import write_dialogues
    from silkfire.fire.teacher import build_teacher

    cfg, settings = setup.cfg, setup.cfg.fire.bench
    max_dialogues = settings.get("max_dialogues")
    tasks = bench.bench_tasks(dialogues, setup.scenes, None if max_dialogues is None else int(max_dialogues),
                              setup.seed)
    free: dict[str, Any] = {}
    for teacher_kind in settings.teachers:
        if teacher_kind == "oracle":
            teacher = build_teacher(OmegaConf.to_container(cfg.fire.teacher, resolve=True), root=setup.root,
                                    world=OmegaConf.to_container(cfg.world, resolve=True))
        else:
            teacher = bench.model_teacher(setup.folders["teacher"], setup.options, "trained")
        runs = {}
        for name in ("sft", "fire"):
            student = bench.model_student(setup.folders[name], setup.options, name)
            runs[name] = bench.free_dialogue(student, teacher, tasks, setup.world, max_turns=int(settings.max_turns),
                                             stop_score=setup.stop, progress=bool(settings.progress))
            write_dialogues(out / f"free_{teacher_kind}_{name}.jsonl", runs[name].dialogues)
            del student
            gc.collect()
        free[teacher_kind] = bench.free_dialogue_results(runs, str(settings.baseline), setup.stop)
        del teacher
        gc.collect()
    return free


def _fixed_rows(items: list[Any], generated: list[str]) -> list[dict[str, Any]]:
    return [{"dialogue": item.dialogue, "turn": item.turn, "role": item.role, "image": item.image,
             "question": item.question, "reference": item.reference, "generated": text}
            for item, text in zip(items, generated)]


def summary(metrics: dict[str, Any]) -> str:
    text = _headline(metrics)
    if metrics.get("val"):
        text += f" | val: {_headline(metrics['val'])}"
    return text


def _headline(metrics: dict[str, Any]) -> str:
    """One split's figures in a line: free dialogue with the oracle teacher, the teachers' score MAE."""
    parts = []
    oracle = metrics.get("free", {}).get("oracle") or next(iter(metrics.get("free", {}).values()), {})
    if "sft" in oracle and "fire" in oracle:
        base, fire = oracle["sft"], oracle["fire"]
        parts.append(f"RR {base['RR']:.2f} -> {fire['RR']:.2f}, ADR {base['ADR']:.2f} -> {fire['ADR']:.2f}, "
                     f"AT 1 -> {fire['AT_norm']:.2f}")
    teachers = metrics.get("fixed", {}).get("teacher", {})
    if "sft" in teachers and "teacher" in teachers:
        parts.append(f"teacher MAE {teachers['sft']['MAE']:.2f} -> {teachers['teacher']['MAE']:.2f}")
    return "; ".join(parts)
