"""`silkfire eval`: one model checkpoint on one published benchmark file, without the pipeline.

    silkfire eval mme   data/                    --model models/sft/model   # lmms-lab/MME parquet shards (or JSONL)
    silkfire eval mmhal MMHal-Bench/response_template.json --model DIR [--judge-url URL --judge-model M]
    silkfire eval fire  FIRE-test.json --image-root fire_images/ --model DIR [--role teacher] [--teacher DIR]

Each run goes the same way:

1. **Read** the file with its real loader (:mod:`silkfire.data.published`): parquet with pyarrow (embedded image
   bytes written under ``<image root>/extracted/`` by content hash), JSON lists and JSONL as they are;
   MMHal-Bench items get ``image_path = images/<last part of image_src>``.
2. **Gate**: the kind's data-quality gate (``silkfire validate``'s) on the file, reports under ``<out>/gate/``.
   A failure stops here (exit 1) with the report; under ``--set <kind>.policy=filter`` the bad records are
   quarantined and the rest evaluated. Every image read after this goes through the image path policy.
3. **Generate** greedy answers with the checkpoint (``silkfire.eval.answers`` / the FIRE student and teacher).
4. **Score** with the benchmark's own scorer: MME's official parser and acc/acc+ (:mod:`silkfire.eval.mme`);
   MMHal's 0-6 judge and mean score/hallucination rate (:mod:`silkfire.eval.mmhal`; needs a judge endpoint,
   else the answers are written in the template's layout for any judge); FIRE-Bench's fixed dialogue BLEU-1..4 /
   CIDEr (and the teacher's score MAE) and, with ``--teacher``, free dialogue AT/ADR/ATR/RR
   (:mod:`silkfire.fire.metrics`).

Outputs in ``--out`` (default ``reports/eval/<benchmark>/<file stem>``): ``predictions.jsonl`` (MMHal:
also ``responses.json``), ``scores.json`` (also printed), ``gate/``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCHMARKS = ("mme", "mmhal", "fire")
ROLES = ("student", "teacher")
# Greedy new-token budgets of the benchmarks' own evaluations (lmms-eval MME: 16; MMHal: 1024; FIRE: 160 for
# the student as in FIRE-1M's generation, the teacher's turns are shorter).
MAX_NEW_TOKENS = {"mme": 16, "mmhal": 1024, "fire": 160}
DEFAULT_OUT = Path("reports") / "eval"


class EvalGateFailed(Exception):
    """The benchmark file did not pass its gate; ``result`` is the gate's report."""

    def __init__(self, result: Any) -> None:
        super().__init__(result.to_text())
        self.result = result


@dataclass
class EvalOptions:
    """What `silkfire eval` takes besides the benchmark and its file (see the module docstring)."""

    model: Path
    out: Path | None = None
    image_root: Path | None = None  # default: the file's folder (parquet: extracted images land under it)
    max_items: int | None = None  # MME: question_ids kept whole; MMHal: the first items (types stay interleaved)
    batch_size: int = 16
    max_new_tokens: int | None = None  # None: the benchmark's (MAX_NEW_TOKENS)
    dtype: str = "auto"  # resolved by silkfire.runtime: bfloat16 on a GPU that has it, else float32
    device: str = "auto"  # the GPU when there is one
    groups: Mapping[str, str] = field(default_factory=dict)  # MME: extra category -> perception | cognition
    judge: Any = None  # MMHal: a silkfire.llm.client.ClientConfig of the 0-6 judge
    role: str = "student"  # FIRE fixed dialogue: the model writes the student's or the teacher's turns
    teacher: Path | None = None  # FIRE free dialogue: a trained teacher folder the model (student) talks to
    teacher_instruction: str = "fire"  # FIRE: the scoring instruction a model teacher is prompted with
    max_turns: int = 5  # FIRE free dialogue
    stop_score: float = 8.0  # FIRE: a score >= this ends a free dialogue (RR's "correct")
    seed: int = 0
    overrides: Sequence[str] = ()  # quality config overrides: mme.policy=filter, check_images=false, ...
    progress: bool = True


def out_dir(benchmark: str, path: Path, options: EvalOptions) -> Path:
    return Path(options.out) if options.out is not None else DEFAULT_OUT / benchmark / (Path(path).stem or "data")


def data_root(path: Path, options: EvalOptions) -> Path:
    """Where the records' image paths resolve (and parquet images are extracted): --image-root, else the file's
    folder (a folder of parquet shards: itself)."""
    if options.image_root is not None:
        return Path(options.image_root)
    return path if path.is_dir() else path.parent


# ---- 1 + 2: read and gate ----------------------------------------------------------------------------------------
def gated_records(benchmark: str, path: Path, options: EvalOptions, out: Path) -> tuple[list[dict[str, Any]], Path,
                                                                                        dict[str, Any]]:
    """(records that passed the gate, the image root, the gate's summary); raises :class:`EvalGateFailed`."""
    from silkfire.data.published import mmhal_items, read_records_any
    from silkfire.io import write_jsonl
    from silkfire.quality.cli import config_from_overrides, validate

    root = data_root(path, options)
    config = config_from_overrides(list(options.overrides))
    reports = out / "gate"
    source = path
    if benchmark == "mmhal":  # the published template names no image file: derive it (images/<name>), then gate
        source = out / "benchmark.jsonl"
        write_jsonl(source, mmhal_items(path))
    result = validate(benchmark, source, config, reports, root)
    if source != path:  # the report names the published file and its records (1-based, as the JSONL lines)
        result = _renamed(result, source, path, "record")
        result.write(reports)
    if not result.success:
        raise EvalGateFailed(result)
    table = result.data_tables[0]
    if table.clean_path is not None:
        read_from = Path(table.clean_path)
    elif result.stats.get("converted"):  # parquet: the converted JSONL (images already extracted)
        read_from = Path(result.stats["converted"])
    else:
        read_from = source
    records = read_records_any(read_from, kind=benchmark)
    summary = result.summary()
    kept = ("success", "policy", "rows_in", "rows_out", "rows_quarantined", "images_checked")
    return records, root, {key: summary[key] for key in kept if key in summary} | {"reports": str(reports)}


def _renamed(result: Any, converted: Path, original: Path, label: str) -> Any:
    tables = tuple(dataclasses.replace(table, source=original, line_label=label)
                   if Path(table.source) == converted else table for table in result.tables)
    return dataclasses.replace(result, tables=tables, stats={**result.stats, "source": str(original)})


def first_items(benchmark: str, records: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """At most ``limit`` records: MME's question_ids kept whole (both questions of an image), else the first."""
    if limit is None or len(records) <= limit:
        return records
    if benchmark != "mme":
        return records[:limit]
    kept: list[dict[str, Any]] = []
    ids: set[Any] = set()
    for record in records:
        if record.get("question_id") not in ids:
            if len(kept) >= limit:
                break
            ids.add(record.get("question_id"))
        kept.append(record)
    return kept


# ---- 3 + 4: generate and score -----------------------------------------------------------------------------------
def _load(options: EvalOptions) -> tuple[Any, Any]:
    from silkfire.models.loading import load_vlm

    return load_vlm(Path(options.model), dtype=options.dtype, device=options.device)


def evaluate_mme(records: list[dict[str, Any]], root: Path, options: EvalOptions) -> tuple[list[dict], dict]:
    from silkfire.eval.answers import generate_answers
    from silkfire.eval.mme import PARSER_NAME, WORLD_CATEGORY_GROUPS, score_mme

    model, processor = _load(options)
    answers = generate_answers(model, processor, records, root, batch_size=options.batch_size,
                               max_new_tokens=options.max_new_tokens or MAX_NEW_TOKENS["mme"],
                               progress=options.progress)
    predictions = [{**record, "prediction": answer} for record, answer in zip(records, answers)]
    scores = score_mme(predictions, {**WORLD_CATEGORY_GROUPS, **dict(options.groups)})
    return predictions, {**scores, "parser": PARSER_NAME, "questions": len(predictions)}


def evaluate_mmhal(items: list[dict[str, Any]], root: Path, options: EvalOptions, out: Path) -> tuple[list[dict], dict]:
    from silkfire.eval.answers import generate_answers
    from silkfire.eval.mmhal import ApiMMHalRater, score_mmhal

    model, processor = _load(options)
    questions = [{"id": item.get("image_id"), "question": item["question"], "image": item["image_path"]}
                 for item in items]
    answers = generate_answers(model, processor, questions, root, batch_size=options.batch_size,
                               max_new_tokens=options.max_new_tokens or MAX_NEW_TOKENS["mmhal"],
                               progress=options.progress)
    answered = [{**item, "model_answer": answer} for item, answer in zip(items, answers)]
    # the benchmark's own layout (response_template.json with model_answer filled): what any MMHal judge reads
    published = [{key: value for key, value in item.items() if key != "image_path"} for item in answered]
    (out / "responses.json").write_text(json.dumps(published, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if options.judge is None:
        return answered, {"items": len(answered), "rated": False,
                          "note": "no judge: answers written to responses.json (MMHal's template layout); pass "
                                  "--judge-url/--judge-model for the 0-6 ratings and the score"}
    rater = ApiMMHalRater(options.judge, out / "judge_cache", progress=options.progress)
    try:
        rated = rater.rate(answered)
    finally:
        rater.close()
    return rated, {**score_mmhal(rated), "items": len(rated), "rated": True, "judge": options.judge.model,
                   **rater.metrics()}


def evaluate_fire(records: list[dict[str, Any]], root: Path, options: EvalOptions, out: Path) -> tuple[list[dict],
                                                                                                        dict]:
    from silkfire.fire import bench
    from silkfire.fire.metrics import free_dialogue_metrics
    from silkfire.fire.records import dialogue_from_record, write_dialogues

    if options.role not in ROLES:
        raise ValueError(f"role must be one of {list(ROLES)}, got {options.role!r}")
    dialogues = [dialogue_from_record(record, where=f"record {index + 1}") for index, record in enumerate(records)]
    generation = bench.GenerationOptions(
        batch_size=options.batch_size, student_max_new_tokens=options.max_new_tokens or MAX_NEW_TOKENS["fire"],
        teacher_max_new_tokens=options.max_new_tokens or MAX_NEW_TOKENS["fire"], dtype=options.dtype,
        teacher_instruction=options.teacher_instruction, progress=options.progress)
    scores: dict[str, Any] = {"dialogues": len(dialogues), "role": options.role}
    rows: list[dict[str, Any]] = []
    if options.role == "student":
        items = bench.student_items(dialogues, options.max_items, options.seed)
        student = bench.model_student(options.model, generation, "model")
        generated, fixed = bench.fixed_student(student, items, root)
    else:
        items = bench.teacher_items(dialogues, options.max_items, options.seed)
        teacher_model = bench.model_teacher(options.model, generation, "model")
        generated, fixed = bench.fixed_teacher(teacher_model, items, root)
    scores["fixed"] = fixed
    rows = [{"dialogue": item.dialogue, "turn": item.turn, "role": item.role, "image": item.image,
             "question": item.question, "reference": item.reference, "prediction": text}
            for item, text in zip(items, generated)]
    if options.teacher is not None:
        if options.role != "student":
            raise ValueError("--teacher (free dialogue) needs --role student: the model is the student")
        tasks = bench.bench_tasks(dialogues, None, options.max_items, options.seed)
        teacher = bench.model_teacher(options.teacher, generation, "teacher")
        run = bench.free_dialogue(student, teacher, tasks, root, max_turns=options.max_turns,
                                  stop_score=options.stop_score, progress=options.progress)
        write_dialogues(out / "free_dialogues.jsonl", run.dialogues)
        free = free_dialogue_metrics(run.dialogues, threshold=options.stop_score) if run.dialogues else {}
        scores["free"] = {**free, "dropped": run.dropped, "empty_responses": run.empty_responses,
                          "empty_feedback": run.empty_feedback}
    return rows, scores


def run_eval(benchmark: str, path: str | Path, options: EvalOptions) -> dict[str, Any]:
    """Read, gate, generate, score (module docstring); writes the outputs and returns the scores."""
    from silkfire.io import write_json, write_jsonl

    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose one of {list(BENCHMARKS)}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    out = out_dir(benchmark, path, options)
    out.mkdir(parents=True, exist_ok=True)
    records, root, gate = gated_records(benchmark, path, options, out)
    if benchmark == "fire":
        rows, scores = evaluate_fire(records, root, options, out)
    else:
        records = first_items(benchmark, records, options.max_items)
        if benchmark == "mme":
            rows, scores = evaluate_mme(records, root, options)
        else:
            rows, scores = evaluate_mmhal(records, root, options, out)
    write_jsonl(out / "predictions.jsonl", rows)
    result = {"benchmark": benchmark, "file": str(path), "model": str(options.model), "image_root": str(root),
              "gate": gate, **scores}
    write_json(out / "scores.json", result)
    return result
