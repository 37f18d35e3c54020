"""FIRE's two trained models, one stage each (`fire_student`, `fire_teacher`): the role's SFT set from the gated
training dialogues, then SFT from the foundation's model (so FIRE-LLaVA = SFT + FIRE data). Separate stages, so a
teacher-only setting re-trains only the teacher (issue 15).

Both start from models/sft/model and are trained with silkfire.train.sft (Trainer; LoRA optional,
``fire.sft.<role>.lora``) on the sets built by silkfire.fire.sft_data:

- student: one multi-turn sample per dialogue -- question -> response, feedback -> refined response, ... With
  ``student_turns: improving`` the loss covers the turns that are correct or improve on the previous score; the
  scripted students' deliberate first mistakes and ignored feedback stay in the context only (``all``: every turn,
  FIRE's recipe). A share of world SFT records (``mix_sft`` of ``mix_families``, shares ``mix_family_weights``)
  keeps the student's QA skill; questions of the dialogues' families come as right first turns in FIRE's form.
- teacher: one sample per teacher turn (question + ground truth + the scoring instruction + the student's response
  -> "Score: N.\\nFeedback: ..."). ``teacher_instruction``: ``fire`` (upstream's text) or ``short`` (the tiny
  model's tokenizer spends ~420 tokens on upstream's; fire_bench prompts the teacher with the same one).

Both roles hold out the same seeded share of the training dialogues (``val_fraction``) for the eval loss. Each
model is logged to its stage's run (the `register_fire` stage registers it as ``silkfire-fire-student`` /
``silkfire-fire-teacher``, alias ``candidate``); its curves go
to metrics/curves/fire_<role>.{csv,png} (DVC plots) and to its stage's MLflow run.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from silkfire.artefacts import dialogue_image_root as dialogue_images
from silkfire.artefacts import dialogue_source as source_of

ROLES = ("student", "teacher")
TURN_POLICIES = ("all", "improving")


def trained_turns(scores: Sequence[int | None], policy: str, threshold: float) -> list[bool]:
    """Which student turns get the loss (one flag per response; see the module docstring)."""
    if policy not in TURN_POLICIES:
        raise ValueError(f"fire.sft.student_turns: {policy!r}; choose from {list(TURN_POLICIES)}")
    values = [0 if score is None else score for score in scores]
    if policy == "all":
        return [True] * len(values)
    return [value >= threshold or (k > 0 and value > values[k - 1]) for k, value in enumerate(values)]


def split_dialogues(dialogues: Sequence[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, val): a seeded ``fraction`` of the dialogues (at least one when there are two) held out."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fire.sft.val_fraction must be in [0, 1), got {fraction}")
    count = max(1, round(fraction * len(dialogues))) if len(dialogues) >= 2 and fraction > 0 else 0
    held = set(random.Random(f"silkfire-fire-val/{seed}").sample(range(len(dialogues)), count))
    return ([d for i, d in enumerate(dialogues) if i not in held], [d for i, d in enumerate(dialogues) if i in held])


def student_set(dialogues: Sequence[Any], policy: str, threshold: float) -> tuple[list[dict[str, Any]], int]:
    """Student samples with per-turn loss flags; samples with no trained turn are left out (returned count)."""
    from silkfire.fire.sft_data import student_samples

    samples, left_out = [], 0
    for sample, dialogue in zip(student_samples(dialogues), dialogues):
        flags = trained_turns(dialogue.scores[:len(sample["turns"])], policy, threshold)
        if not any(flags):
            left_out += 1
            continue
        samples.append({**sample, "train_turns": flags})
    return samples, left_out


def mix_records(world_file: Path, families: Sequence[str] | None, count: int, seed: int,
                weights: Mapping[str, float] | None = None,
                student_families: Sequence[str] = ()) -> list[dict[str, Any]]:
    """A seeded sample of ``count`` world SFT records of ``families`` (``weights``: each family's share).

    Records of ``student_families`` -- the families the dialogues ask, which the student answers in FIRE's
    ``Thought/Answer`` form -- are written as right first student turns in that form, so the mix keeps the
    student's first answers right instead of teaching a second format; others (MME yes/no) stay as they are."""
    from silkfire.fire.students import correct_turn
    from silkfire.io import read_records
    from silkfire.train.data import select_records

    if count <= 0:
        return []
    records = [r for r in read_records(world_file) if families is None or r.get("family") in families]
    if not records:
        raise ValueError(f"fire.sft.mix_families {list(families or [])}: no such records in {world_file}")
    chosen = select_records(records, None, count, f"silkfire-fire-mix/{seed}", weights)
    mixed = []
    for record in chosen:
        if record.get("family") in student_families:
            turn = correct_turn(record)
            record = {"id": record["id"], "image": record["image"], "kind": "student",
                      "source": f"shapes-{record['family']}-{record.get('category')}",
                      "turns": [[record["question"], turn]], "question": record["question"], "answer": turn}
        mixed.append(dict(record))
    return mixed


def sample_length(processor: Any, record: Mapping[str, Any], image_tokens: int) -> int:
    """Tokens of a rendered sample (the image placeholder expanded), as the trainer will see it."""
    from silkfire.train.data import conversation_pieces, record_turns

    pieces = conversation_pieces(processor, [(u, a) for u, a, _ in record_turns(record)])
    text = "".join(piece for piece, _ in pieces)
    return len(processor.tokenizer(text)["input_ids"]) + image_tokens - 1


def cap_length(records: list[dict[str, Any]], processor: Any, image_tokens: int,
               max_length: int | None) -> tuple[list[dict[str, Any]], int]:
    if max_length is None:
        return records, 0
    kept = [r for r in records if sample_length(processor, r, image_tokens) <= max_length]
    return kept, len(records) - len(kept)




def sets_dir(cfg: DictConfig, root: Path, role: str) -> Path:
    """Where a role's SFT sets are written: <paths.fire>/sft/<role>/{train,val}.jsonl."""
    return root / cfg.paths.fire / "sft" / role


def build_role_sets(cfg: DictConfig, root: Path, role: str) -> dict[str, Any]:
    """Write the role's sets (:func:`sets_dir`) from the gated training dialogues; returns the counts."""
    from silkfire.artefacts import gated_dialogues, gated_file
    from silkfire.fire.records import read_dialogues
    from silkfire.fire.sft_data import teacher_samples, write_sft

    if role not in ROLES:
        raise ValueError(f"FIRE role must be one of {list(ROLES)}, got {role!r}")
    settings = cfg.fire.sft
    seed = int(cfg.fire.seed)
    dialogues, _ = read_dialogues(gated_dialogues(cfg, root, "train"))
    train, val = split_dialogues(dialogues, float(settings.val_fraction), seed)
    counts: dict[str, Any] = {"dialogues_train": len(train), "dialogues_val": len(val)}
    if role == "student":
        threshold = float(cfg.fire.dialogues.stop_score)  # what counts as a correct turn
        train_set, left_out = student_set(train, str(settings.student_turns), threshold)
        val_set, _ = student_set(val, str(settings.student_turns), threshold)  # eval loss on what is trained
        if source_of(cfg) == "published" and float(settings.mix_sft) > 0:
            raise ValueError("fire_student: fire.sft.mix_sft mixes world SFT records into the student set, but the "
                             "dialogues are published (fire.dialogues.source=published) and their images live "
                             "elsewhere: set fire.sft.mix_sft=0")
        families = list(settings.mix_families) if settings.mix_families is not None else None
        weights = settings.get("mix_family_weights")
        mixed = [] if float(settings.mix_sft) <= 0 else mix_records(
            gated_file(cfg, root, "train.jsonl"), families, round(float(settings.mix_sft) * len(train_set)), seed,
            OmegaConf.to_container(weights) if weights else None,  # type: ignore[arg-type]
            student_families=list(cfg.fire.dialogues.families))
        counts.update({"untrained_dialogues": left_out, "mixed_sft": len(mixed)})
        train_set = train_set + mixed
    else:
        instruction = str(settings.teacher_instruction)
        train_set, skipped = teacher_samples(train, instruction)
        val_set, _ = teacher_samples(val, instruction)
        counts["unparsable_skipped"] = skipped
    sets = {"train": train_set, "val": val_set}
    max_length = settings.get("max_length")
    if max_length is not None and train_set:
        from silkfire.models.loading import load_vlm
        from silkfire.train.data import count_image_tokens, load_image

        _, processor = load_vlm(root / cfg.paths.sft / "model", device="cpu")  # for its processor only
        tokens = count_image_tokens(processor, load_image(dialogue_images(cfg, root), train_set[0]["image"]))
        for split in sets:
            sets[split], dropped = cap_length(sets[split], processor, tokens, int(max_length))
            counts[f"{split}_too_long"] = dropped
    out = sets_dir(cfg, root, role)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for split, records in sets.items():
        if not records:
            raise ValueError(f"fire_{role}: the {role} {split} set is empty (dialogues: {len(dialogues)})")
        random.Random(f"silkfire-fire-{role}-{split}/{seed}").shuffle(records)
        counts[f"{split}_samples"] = write_sft(out / f"{split}.jsonl", records)
    return counts


def train_role(cfg: DictConfig, root: Path, role: str) -> dict[str, Any]:
    """Train one model (student or teacher) on its sets in the active MLflow run; returns its metrics."""
    import mlflow

    from silkfire.tracking.curve_logger import mlflow_logger
    from silkfire.tracking.plots import publish_curves, training_curves
    from silkfire.tracking.registry import log_trained_model
    from silkfire.train.sft import train_sft

    settings = cfg.fire.sft
    values = OmegaConf.to_container(settings[role], resolve=True)
    out_dir = root / (cfg.paths.fire_student if role == "student" else cfg.paths.fire_teacher)
    data = sets_dir(cfg, root, role)
    mlflow.set_tag("silkfire.role", role)
    mlflow.log_params({f"{role}.{key}": str(value) for key, value in values.items()})
    result = train_sft(root / cfg.paths.sft / "model", data / "train.jsonl", data / "val.jsonl",
                       dialogue_images(cfg, root), role_config(cfg, role), out_dir,
                       callbacks=[mlflow_logger()], config_key=f"fire.sft.{role}")
    publish_curves(out_dir / "history.csv", training_curves(result.history, title=f"FIRE {role}"),
                   root / cfg.paths.metrics, f"fire_{role}")
    metrics: dict[str, Any] = dict(result.metrics)
    if cfg.tracking.log_model:  # register_fire registers it: registry names never retrain
        metrics["logged_model"] = log_trained_model(result.model_dir)
    return metrics


def run_role(cfg: DictConfig, root: Path, role: str) -> dict[str, Any]:
    """A role stage's `run`: its gates' verdicts, its sets (logged to MLflow), its model; the metrics hold the
    model's figures and the set counts under ``sets``."""
    import mlflow

    from silkfire.quality.verdict import require_passed

    require_passed(cfg, root, f"fire_{role}")  # the FIRE (and, mixed in, the world) gates vouch for the data
    counts = build_role_sets(cfg, root, role)
    mlflow.log_artifacts(str(sets_dir(cfg, root, role)), artifact_path="sft_sets")
    return {**train_role(cfg, root, role), "sets": counts}


def role_summary(metrics: Mapping[str, Any]) -> str:
    """One line for the run table: the eval loss, a resume, whether the model was logged."""
    text = f"eval_loss={metrics.get('eval_loss', float('nan')):.3g}"
    if metrics.get("resumed_from_step"):
        text += f" resumed from step {metrics['resumed_from_step']}"
    if "logged_model" in metrics:
        text += " model logged"
    return text


def role_config(cfg: DictConfig, role: str) -> Any:
    """The SFT settings of one role (``fire.sft.student`` / ``fire.sft.teacher``), parsed."""
    from silkfire.train.sft import SFTConfig

    values = OmegaConf.to_container(cfg.fire.sft[role], resolve=True)
    assert isinstance(values, dict)
    # dialogues are whole samples: never pack several into one history
    return SFTConfig.from_mapping(values, seed=int(cfg.fire.seed), dtype=str(cfg.runtime.dtype),
                                  device=str(cfg.runtime.device),
                                  gradient_checkpointing=bool(cfg.runtime.gradient_checkpointing), turns_per_sample=1,
                                  families=None)
