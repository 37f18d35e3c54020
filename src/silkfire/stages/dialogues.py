"""Stage `dialogues`: student x teacher feedback-refinement dialogues on the world's questions, as FIRE records.

- train split (world train.jsonl, gated copy): the training dialogues. Scripted refining students play the
  student -- FIRE-100K was written by a strong model playing both roles; offline, scripted students with known
  failure profiles stand in for it -- each taking a share of the questions (``fire.dialogues.students``).
- test split (world open.jsonl: held-out scenes): the test dialogues, FIRE-Bench's fixed-dialogue references and
  free-dialogue questions, made the same way.
- val split (world val.jsonl without its MME pairs: the open/probe questions of the val scenes, the families
  open.jsonl holds for test scenes): FIRE-Bench's validation dialogues, made the same way, so choices are made on
  val and the test split is read only for final figures. A seeded sample of ``val_questions`` keeps its cost down.

The teacher is ``fire.teacher`` (the oracle by default). The files are FIRE records (``split``: train|test|val)
plus the world's ``id``/``family``/``category``; the `validate_dialogues` gate checks them next.

``fire.dialogues.source: published`` reads the dialogues as released instead of simulating them: FIRE-100K
(``fire.dialogues.published.train_file``, FIRE-train-100K.json) becomes the training dialogues and FIRE-Bench
(``test_file``, FIRE-test.json) the test dialogues, each a seeded sample of ``train_questions`` /
``test_questions`` records (null: all), copied as they are (any extra keys kept) in file order. FIRE publishes no
validation split: val dialogues exist only when ``published.val_file`` names one (capped by ``val_questions``);
otherwise there is no val.jsonl and FIRE-Bench reports test only (:func:`silkfire.artefacts.dialogue_splits`). Their image paths resolve
against ``fire.dialogues.published.image_root`` (:func:`silkfire.artefacts.dialogue_image_root`), which the FIRE gate reads through the image
path policy. Read with :mod:`silkfire.data.published` (JSON list, JSONL or parquet); a file
that cannot be read stops the stage naming file and record; bad records are the gate's to report.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from silkfire.artefacts import SPLIT_FILES, dialogue_image_root, dialogue_source, dialogue_splits
from silkfire.artefacts import dialogue_dir as out_dir
from silkfire.stages import Dep, Out

PARAMS = ("fire.seed", "fire.dialogues", "fire.teacher", "world", "runtime", "paths.world", "paths.reports",
          "paths.fire")
DEPS = (
    Dep("${paths.world}"),
    Dep("${paths.reports}/validate/verdict.json",
        "only gated world data becomes dialogues"),
)
OUTS = (
    Out("${paths.fire}/dialogues",
        note="train/test/val.jsonl (no val for published FIRE without a val file)"),
)
HELD_OUT_FAMILIES = {"val": "mme"}  # val.jsonl also holds MME pairs; open.jsonl (test) has none: drop them alike


def student_shares(students: Any, seed: int) -> list[tuple[dict[str, Any], float]]:
    """(student config, share) pairs from ``fire.dialogues.students``; shares are normalised to sum to 1."""
    items = OmegaConf.to_container(students, resolve=True) if isinstance(students, DictConfig) else students
    if not items:
        raise ValueError("fire.dialogues.students is empty: name at least one student (e.g. kind: scripted)")
    pairs = []
    for index, item in enumerate(items):
        item = dict(item)
        share = float(item.pop("share", 1.0))
        if share <= 0:
            raise ValueError(f"fire.dialogues.students[{index}]: share must be > 0, got {share}")
        item.setdefault("seed", seed)
        pairs.append((item, share))
    total = sum(share for _, share in pairs)
    return [(item, share / total) for item, share in pairs]


def split_tasks(tasks: list[Any], shares: list[float], seed: int) -> list[list[Any]]:
    """Deal the tasks to the students by share (a seeded shuffle, then contiguous slices; task order kept)."""
    order = list(range(len(tasks)))
    random.Random(f"silkfire-fire-deal/{seed}").shuffle(order)
    parts: list[list[int]] = []
    start = 0
    for index, share in enumerate(shares):
        end = len(order) if index == len(shares) - 1 else start + round(share * len(order))
        parts.append(sorted(order[start:end]))
        start = end
    return [[tasks[i] for i in part] for part in parts]


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    import mlflow

    from silkfire.fire.dialogue import run_dialogues, world_tasks
    from silkfire.fire.records import write_dialogues
    from silkfire.fire.students import build_student
    from silkfire.fire.teacher import build_teacher
    from silkfire.artefacts import gated_file

    settings = cfg.fire.dialogues
    seed = int(cfg.fire.seed)
    if dialogue_source(cfg) == "published":
        return published_dialogues(cfg, root)
    from silkfire.runtime import from_config, oom_hint

    runtime = from_config(cfg)  # model students/teachers: runtime.device/dtype unless their config says otherwise
    world_cfg = OmegaConf.to_container(cfg.world, resolve=True)
    world_dir = root / cfg.paths.world
    teacher = build_teacher(OmegaConf.to_container(cfg.fire.teacher, resolve=True), root=root, world=world_cfg)
    families = list(settings.families) if settings.families is not None else None
    categories = set(settings.categories) if settings.categories is not None else None
    students = student_shares(settings.students, seed)
    target = out_dir(cfg, root)
    target.mkdir(parents=True, exist_ok=True)
    mlflow.log_params({"teacher": teacher.name, "students": ", ".join(
        f"{s.get('name') or s.get('profile') or s['kind']}:{share:.2f}" for s, share in students)})

    metrics: dict[str, Any] = {}
    for split, world_file in SPLIT_FILES.items():
        # the gate's clean copy when the world gate filtered rows (train); the held-out file as generated
        source = gated_file(cfg, root, world_file)
        # an absolute file name: the questions from `source`, the scene graphs from the world's scenes.jsonl
        tasks = world_tasks(world_dir, str(source.resolve()), families=families, seed=seed, split=split)
        if categories is not None:
            tasks = [task for task in tasks if task.category in categories]
        if split in HELD_OUT_FAMILIES:
            tasks = [task for task in tasks if task.family != HELD_OUT_FAMILIES[split]]
        limit = settings.get(f"{split}_questions")
        if limit is not None and len(tasks) > int(limit):
            tasks = random.Random(f"silkfire-fire-{split}/{seed}").sample(tasks, int(limit))
        if not tasks:
            raise ValueError(f"no {split} questions of families {families} in {source}")
        dialogues, stats = [], {"tasks": 0, "dialogues": 0, "dropped": {}, "stop_reasons": {}}
        for (student_cfg, _share), part in zip(students, split_tasks(tasks, [s for _, s in students], seed)):
            if not part:
                continue
            on_device = {"device": runtime.device, "dtype": runtime.dtype} if student_cfg.get("kind") == "hf" else {}
            student = build_student({**on_device, **student_cfg}, root=root, seed=seed, world=world_cfg)
            knobs = {f"fire.dialogues.students[{students.index((student_cfg, _share))}].batch_size":
                     student_cfg.get("batch_size", 16)} if on_device else {}
            if cfg.fire.teacher.get("kind") == "trained":
                knobs["fire.teacher.batch_size"] = cfg.fire.teacher.batch_size
            with oom_hint(f"dialogues ({split})", knobs, runtime=runtime):
                result = run_dialogues(part, student, teacher, world_dir, threshold=float(settings.stop_score),
                                       max_rounds=int(settings.max_rounds), progress=bool(settings.progress))
            dialogues.extend(_with_world_keys(result.dialogues, part))
            _merge_stats(stats, result.stats)
        path = target / f"{split}.jsonl"
        write_dialogues(path, dialogues)
        stats["dialogues"] = len(dialogues)
        stats["rounds"] = _rounds(dialogues)
        stats.update(_free_summary(dialogues, float(settings.stop_score)))
        metrics[split] = stats
    return metrics


def published_dialogues(cfg: DictConfig, root: Path) -> dict[str, Any]:
    """``source: published``: the released files' records, a seeded sample per split (module docstring)."""
    import mlflow

    from silkfire.data.published import read_records_any
    from silkfire.io import write_jsonl

    settings = cfg.fire.dialogues
    published = settings.get("published") or {}
    seed = int(cfg.fire.seed)
    folder = dialogue_image_root(cfg, root)
    if not folder.is_dir():
        raise FileNotFoundError(f"fire.dialogues.published.image_root: {folder} is not a folder")
    target = out_dir(cfg, root)
    target.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {"source": "published", "image_root": str(folder)}
    if "val" not in dialogue_splits(cfg):
        (target / "val.jsonl").unlink(missing_ok=True)  # a simulated run's val file must not pass for published data
    for split in dialogue_splits(cfg):
        key = f"{split}_file"
        name = published.get(key)
        if not name:
            raise ValueError(f"fire.dialogues.published.{key}: the FIRE file of the {split} split is not set "
                             "(FIRE-train-100K.json / FIRE-test.json)")  # val: only asked for when set
        path = root / str(name)
        records = read_records_any(path, kind="fire")
        limit = settings.get(f"{split}_questions")
        if limit is not None and len(records) > int(limit):
            keep = sorted(random.Random(f"silkfire-fire-{split}/{seed}").sample(range(len(records)), int(limit)))
            records = [records[index] for index in keep]
        if not records:
            raise ValueError(f"fire.dialogues.published.{key}: {path} holds no dialogues")
        write_jsonl(target / f"{split}.jsonl", records)
        rounds: dict[str, int] = {}
        for record in records:
            rounds[str(record.get("round"))] = rounds.get(str(record.get("round")), 0) + 1
        metrics[split] = {"file": str(path), "dialogues": len(records), "rounds": dict(sorted(rounds.items()))}
    mlflow.log_params({"dialogue_source": "published", "train_file": str(published.get("train_file")),
                       "test_file": str(published.get("test_file")), "val_file": str(published.get("val_file"))})
    return metrics


def _with_world_keys(dialogues: list[Any], tasks: list[Any]) -> list[Any]:
    """Dialogues (in task order, dropped ones missing) with the world's id/family/category as extra keys."""
    by_key = {(task.image, task.question): task for task in tasks}
    for dialogue in dialogues:
        task = by_key.get((dialogue.image, dialogue.question))
        if task is not None:
            dialogue.extra.update({"id": task.id, "family": task.family, "category": task.category})
    return dialogues


def _merge_stats(total: dict[str, Any], stats: dict[str, Any]) -> None:
    total["tasks"] += int(stats.get("tasks", 0))
    for key in ("dropped", "stop_reasons"):
        for name, count in (stats.get(key) or {}).items():
            total[key][name] = total[key].get(name, 0) + int(count)


def _rounds(dialogues: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for dialogue in dialogues:
        counts[str(dialogue.round)] = counts.get(str(dialogue.round), 0) + 1
    return dict(sorted(counts.items()))


def _free_summary(dialogues: list[Any], threshold: float) -> dict[str, Any]:
    """The scripted students' refinement in these dialogues (AT/ADR/ATR/RR; first/final accuracy)."""
    from silkfire.fire.metrics import free_dialogue_metrics

    if not dialogues:
        return {}
    free = free_dialogue_metrics(dialogues, threshold)
    scores = [[0 if s is None else s for s in d.scores] for d in dialogues]
    return {**{key: round(float(free[key]), 4) for key in ("AT", "ADR", "ATR", "RR")},
            "accuracy_first": round(sum(s[0] >= threshold for s in scores) / len(scores), 4),
            "accuracy_final": round(sum(s[-1] >= threshold for s in scores) / len(scores), 4)}


def summary(metrics: dict[str, Any]) -> str:
    present = [split for split in SPLIT_FILES if split in metrics]
    if metrics.get("source") == "published":
        return "; ".join(f"{split} {metrics[split].get('dialogues', '?')} published dialogues" for split in present)
    parts = []
    for split in present:
        data = metrics[split]
        parts.append(f"{split} {data.get('dialogues', '?')} dialogues (AT {data.get('AT', '?')}, "
                     f"RR {data.get('RR', '?')})")
    return "; ".join(parts)
