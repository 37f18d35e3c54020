"""Supervised fine-tuning of a VLM on world instructions, with transformers' Trainer.

Trainer (not a hand loop) because it gives checkpoints, resume, eval, logging and callbacks (MLflow) for free
and, on pre-encoded tensors, costs about the same per step as a plain loop (measured, see the report). Data is
encoded once (``silkfire.train.data``: token rows memory-mapped from a temporary folder, images processed when read,
so memory stays flat in data size); the loss covers only the assistant's answer tokens.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from silkfire.io import write_json
from silkfire.models.config import build_dataclass, to_plain_mapping
from silkfire.train.callbacks import Callback, trainer_bridge
from silkfire.train.lora import LoraOptions
from silkfire.world.templates import ANSWER_STYLES  # importable from here too

# Model parts that can be frozen, the same three names in every family (silkfire.models.families says where each
# part lives: LLaVA's vision_tower / multi_modal_projector, Qwen2-VL's visual blocks / merger, ...).
FREEZABLE = ("vision_tower", "projector", "language_model")
HISTORY_FIELDS = ("step", "epoch", "loss", "learning_rate", "grad_norm", "eval_loss")


@dataclass(frozen=True)
class SFTConfig:
    """SFT hyper-parameters. conf/train/sft.yaml documents every key and is where defaults are decided: these
    mirror it (tests/train/test_config_defaults.py), so code that builds a config gets the same recipe."""

    learning_rate: float = 3e-4
    num_epochs: float = 1.0
    max_steps: int = 2000  # > 0 overrides num_epochs; <= 0: num_epochs decides (as in DPO)
    batch_size: int = 128
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    lr_scheduler: str = "constant_with_warmup"
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    save_steps: int = 300
    save_total_limit: int = 2
    eval_steps: int = 100  # 0 = evaluate only at the end
    eval_batch_size: int = 64
    max_eval_samples: int | None = 512
    num_threads: int = 2
    max_samples: int | None = None
    families: tuple[str, ...] | None = None  # None = all families of the file
    family_weights: Mapping[str, float] | None = None  # share per family when max_samples caps the data
    answer_style: str = "explained"  # plain: the record's answer | explained: "Yes, <rationale>." where it has one
    turns_per_sample: int = 1  # > 1 packs questions about one image into multi-turn samples (train set only)
    curriculum_steps: int = 0  # > 0: the first N optimizer steps train on curriculum_families only, then on all
    curriculum_families: tuple[str, ...] = ("open", "probe")
    group_by_length: bool = False  # batches of similar lengths (planned order, resume-exact); not with a curriculum
    freeze: tuple[str, ...] = ("vision_tower",)  # parts kept fixed: "vision_tower", "projector", "language_model"
    seed: int = 0
    # auto: continue the newest checkpoint under out_dir/checkpoints when it carries this run's fingerprint (else
    # start over, saying why) | true: continue it, fail if its fingerprint differs | false: always start over
    resume: bool | str = "auto"
    progress: bool = True
    dtype: str = "float32"  # compute precision (silkfire.runtime): auto | float32 | bfloat16 (fp32 master + autocast)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (runtime.device)
    gradient_checkpointing: bool = False  # runtime.gradient_checkpointing
    lora: LoraOptions | None = None  # PEFT LoRA (a mapping of LoraOptions keys is parsed); None = full fine-tuning

    def __post_init__(self) -> None:
        if self.learning_rate <= 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("train: learning_rate must be > 0, batch_size and grad_accum >= 1")
        if self.max_steps <= 0 and self.num_epochs <= 0:
            raise ValueError("train: set num_epochs > 0 or max_steps > 0")
        if self.num_threads < 1:
            raise ValueError("train.num_threads must be >= 1")
        unknown = sorted(set(self.freeze) - set(FREEZABLE))
        if unknown:
            raise ValueError(f"train.freeze: unknown part(s) {unknown}; choose from {list(FREEZABLE)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError("train.warmup_ratio must be in [0, 1)")
        if self.turns_per_sample < 1:
            raise ValueError("train.turns_per_sample must be >= 1")
        if self.curriculum_steps < 0 or (self.curriculum_steps > 0 and not self.curriculum_families):
            raise ValueError("train.curriculum_steps must be >= 0, with curriculum_families naming >= 1 family")
        if self.group_by_length and self.curriculum_steps > 0:
            raise ValueError("train.group_by_length and train.curriculum_steps cannot be combined (the curriculum "
                             "fixes which samples come first); set one of them")
        if self.answer_style not in ANSWER_STYLES:
            raise ValueError(f"train.answer_style must be one of {ANSWER_STYLES}, got {self.answer_style!r}")
        from silkfire.train.resume import resume_mode

        object.__setattr__(self, "resume", resume_mode(self.resume))  # "auto" | "true" | "false"
        # unknown keys / bad values fail here, before any work; `enabled: false` becomes None
        object.__setattr__(self, "lora", LoraOptions.from_mapping(self.lora))

    @classmethod
    def from_mapping(cls, cfg: Any, **overrides: Any) -> SFTConfig:
        """From a dict / DictConfig; keyword ``overrides`` (e.g. the global ``seed``) win over the mapping."""
        values = {**to_plain_mapping(cfg, "train (SFT) config"), **overrides}
        config = build_dataclass(cls, values, "train (SFT) config")
        updates: dict[str, Any] = {}
        if config.families is not None:
            updates["families"] = tuple(config.families)
        if not isinstance(config.curriculum_families, tuple):
            updates["curriculum_families"] = tuple(config.curriculum_families or ())
        if not isinstance(config.freeze, tuple):
            updates["freeze"] = tuple(config.freeze or ())
        if config.family_weights is not None:
            updates["family_weights"] = dict(config.family_weights)
        return cls(**{**asdict(config), **updates}) if updates else config


@dataclass
class SFTResult:
    model_dir: Path
    metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)


def history_from_logs(log_history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per logged step from Trainer's ``state.log_history`` (train and eval logs of a step merged).

    The log history is saved in every checkpoint, so after a resume it still covers the steps before it.
    """
    rows: dict[int, dict[str, Any]] = {}
    for logs in log_history:
        if not any(key in logs for key in ("loss", "eval_loss")):
            continue  # the end-of-training summary
        step = int(logs.get("step", 0))
        row = rows.setdefault(step, {"step": step})
        row["epoch"] = round(float(logs.get("epoch") or 0.0), 4)
        for key in ("loss", "learning_rate", "grad_norm", "eval_loss"):
            if key in logs:
                row[key] = float(logs[key])
    return [rows[step] for step in sorted(rows)]


def write_history_csv(path: Path, history: Sequence[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({key: row.get(key, "") for key in HISTORY_FIELDS})


def freeze_parts(model: Any, parts: Sequence[str]) -> int:
    """Switch off gradients of the named parts; returns the number of frozen weights.

    Freezing the vision tower is LLaVA's own stage-2 recipe. For the tiny model trained from scratch it also
    matters for another reason: with a trainable tower the language model learns to use the image tokens as
    one large constant vector (their spread across images fell from ~25% to ~4% of their norm in our runs)
    and then ignores the image; a frozen random tower keeps the patch features distinct.
    """
    from silkfire.models.families import family_of, part_parameters

    family_of(model)  # an unsupported architecture is refused here, naming the supported ones (also with parts=[])
    frozen = 0
    for part in parts:
        for parameter in part_parameters(model, part):
            if parameter.requires_grad:
                parameter.requires_grad_(False)
                frozen += parameter.numel()
    return frozen


def last_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The newest complete checkpoint (its trainer_state.json, written last, reads back), if any."""
    from silkfire.train.resume import complete_checkpoints

    found = complete_checkpoints(Path(checkpoints_dir))
    return found[-1] if found else None


def data_digest(data: Any) -> str:
    """Digest of encoded SFT data (:meth:`silkfire.train.data.DiskSFTData.digest`): token ids, labels, image of each
    sample and what the image inputs are made from (image files, image processor settings)."""
    return data.digest()


def train_sft(
    base: str | Path,
    train_path: Path,
    val_path: Path,
    image_root: Path,
    config: SFTConfig,
    out_dir: Path,
    callbacks: Sequence[Callback] = (),
    config_key: str = "train",
) -> SFTResult:
    """Fine-tune ``base`` on the instructions of ``train_path`` (images under ``image_root``).

    Writes ``out_dir/checkpoints/checkpoint-<step>`` (every ``save_steps``, ``save_total_limit`` kept),
    ``out_dir/model`` (final model + processor, safetensors), ``out_dir/history.csv`` and
    ``out_dir/metrics.json``. It continues from the newest checkpoint when that carries this run's fingerprint
    (settings, encoded data, start model, code; ``config.resume``: auto | true | false, see
    :mod:`silkfire.train.resume`); the decision is printed, set as tags of the active MLflow run and returned
    in the metrics (``resumed_from_step``, ``steps_run``). Device and precision: :mod:`silkfire.runtime`
    (float32 master weights, bf16 autocast when ``config.dtype`` resolves to bfloat16; the model is saved in the
    start checkpoint's dtype); a CUDA out-of-memory error names ``<config_key>.batch_size``.
    """
    import torch
    from transformers import TrainingArguments, set_seed

    from silkfire import runtime as runtime_policy
    from silkfire.models.loading import checkpoint_dtype, load_vlm
    from silkfire.train import resume
    from silkfire.train.data import RecordSelection, SFTCollator, encode_sft_to_disk

    torch.set_num_threads(config.num_threads)
    set_seed(config.seed)
    out_dir = Path(out_dir)
    checkpoints_dir = out_dir / "checkpoints"
    runtime = runtime_policy.resolve(config.device, config.dtype, config.gradient_checkpointing)
    runtime.check_training(f"train_sft ({config_key})")
    model, processor = load_vlm(base, dtype="float32", device="cpu")  # float32 master weights; Trainer places them
    model.train()
    frozen = freeze_parts(model, config.freeze)
    lora_report = None
    if (lora := config.lora) is not None:
        from silkfire.train.lora import apply_lora

        model, lora_report = apply_lora(model, lora)  # freezes all but the adapters and modules_to_save

    train_records = RecordSelection(train_path, config.families, config.max_samples, config.seed,
                                    config.family_weights, config.answer_style)
    val_records = RecordSelection(val_path, config.families, config.max_eval_samples, config.seed,
                                  answer_style=config.answer_style)
    started = time.perf_counter()
    train_data = encode_sft_to_disk(train_records, processor, image_root, progress=config.progress,
                                    turns_per_sample=config.turns_per_sample, seed=config.seed)
    val_data = encode_sft_to_disk(val_records, processor, image_root, progress=config.progress)
    encode_seconds = time.perf_counter() - started
    train_set, max_steps = _planned(train_data, train_records, config)

    eval_steps = config.eval_steps if config.eval_steps > 0 else None
    args = TrainingArguments(
        output_dir=str(checkpoints_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_epochs,
        max_steps=max_steps,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        lr_scheduler_type=config.lr_scheduler,
        max_grad_norm=config.max_grad_norm,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=not runtime.is_cuda,
        bf16=runtime.dtype == "bfloat16",  # autocast over the float32 weights
        activation_checkpointing=runtime.gradient_checkpointing,  # transformers 5's name for gradient checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False} if runtime.gradient_checkpointing else None,
        report_to="none",
        remove_unused_columns=False,  # our dataset is not a datasets.Dataset: keep items as they are
        dataloader_num_workers=0,
        disable_tqdm=not config.progress,
        save_only_model=False,  # optimizer/scheduler/RNG states make resume exact
    )
    runtime_policy.pin_trainer_device(args, runtime)
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_data,
        data_collator=SFTCollator(processor.tokenizer.pad_token_id, processor.image_token_id),
        processing_class=processor,  # saved next to every checkpoint: each one is a loadable model folder
        callbacks=[trainer_bridge(callbacks)] if callbacks else [],  # silkfire.train.callbacks: DPO's protocol
    )
    if not config.progress:  # with tqdm off, Trainer prints every log dict instead; keep quiet
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    model_dir = out_dir / "model"
    current = resume.fingerprint({**asdict(config), "dtype": runtime.dtype}, {"train_data": data_digest(train_data),
                                                  "eval_data": data_digest(val_data),
                                                  "base_model": resume.model_digest(base)})
    with args.main_process_first(desc="resume decision"):  # every process decides after the main one acted
        decision = resume.decide(checkpoints_dir, current, config.resume, resume.complete_checkpoints(checkpoints_dir))
        if args.should_save:
            resume.prepare(checkpoints_dir, decision, current, clear=[model_dir])
    resume.record(decision, f"train_sft {out_dir}")
    resume_from = decision.checkpoint
    started = time.perf_counter()
    knobs = {f"{config_key}.batch_size": config.batch_size, f"{config_key}.eval_batch_size": config.eval_batch_size}
    oom = runtime_policy.oom_hint(f"train_sft {out_dir}", knobs, training=True, runtime=runtime,
                                  advice=[f"raise {config_key}.grad_accum to keep the effective batch"])
    if resume_from is not None and _finished(resume_from):
        # The last checkpoint is the end of this very run (killed after training): nothing left to train. Trainer
        # would still take one more step when resumed there, so load the checkpoint's weights and state instead.
        from transformers import TrainerState

        trainer._load_from_checkpoint(str(resume_from))
        trainer.state = TrainerState.load_from_json(str(resume_from / "trainer_state.json"))
        training_loss = math.nan
    else:
        with oom:
            training_loss = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None
                                          ).training_loss
    train_seconds = time.perf_counter() - started
    history = history_from_logs(trainer.state.log_history)
    if not history or history[-1]["step"] != trainer.state.global_step or "eval_loss" not in history[-1]:
        with runtime_policy.oom_hint(f"train_sft {out_dir} (eval)", knobs, runtime=runtime):
            trainer.evaluate()  # the final eval loss (unless the last step was just evaluated)
        history = history_from_logs(trainer.state.log_history)

    if lora_report is not None:  # adapters folded in: the saved model is a plain HF folder again
        from silkfire.train.lora import merge_lora

        trainer.model = merge_lora(trainer.model)
    saved_dtype = checkpoint_dtype(base) or "float32"
    if saved_dtype != "float32":  # the float32 master weights go back to the start checkpoint's dtype
        trainer.model.to(getattr(torch, saved_dtype))
    trainer.save_model(str(model_dir))
    steps_run = trainer.state.global_step - decision.step
    samples = steps_run * config.batch_size * config.grad_accum
    train_losses = [row["loss"] for row in history if "loss" in row]
    if resume_from is not None and train_losses:
        # Trainer's mean covers only the steps this process ran; the logged windows cover the whole run
        training_loss = sum(train_losses) / len(train_losses)
    metrics = {
        "train_loss": float(train_losses[-1]) if train_losses else float(training_loss),
        "train_loss_mean": float(training_loss),
        "eval_loss": float(history[-1]["eval_loss"]),
        "samples_per_second": samples / train_seconds if train_seconds > 0 else math.nan,
        # questions (records) per second: samples/s times the mean number of turns per sample
        "questions_per_second": (samples * len(train_records) / len(train_data)) / train_seconds
        if train_seconds > 0 else math.nan,
        "train_seconds": train_seconds,
        "encode_seconds": encode_seconds,
        "global_step": int(trainer.state.global_step),
        "train_samples": len(train_data),
        "train_questions": len(train_records),
        "eval_samples": len(val_data),
        "frozen_parameters": frozen,
        "resumed_from_step": decision.step,  # 0: started at step 0 (silkfire.resume tag: fresh or restarted)
        "steps_run": steps_run,
    }
    if lora_report is not None:
        metrics["lora_trainable_parameters"] = lora_report.trainable_parameters
        metrics["lora_adapted_modules"] = len(lora_report.adapted_modules)
    write_history_csv(out_dir / "history.csv", history)
    write_json(out_dir / "metrics.json", metrics)
    train_data.close()
    val_data.close()
    return SFTResult(model_dir=model_dir, metrics=metrics, history=history)


def _planned(train_data: Any, train_records: Sequence[Any], config: SFTConfig) -> tuple[Any, int]:
    """What Trainer reads, and its max_steps: the encoded data as it is (Trainer shuffles it each epoch), or the
    whole run's order planned up front -- with a curriculum (:func:`silkfire.train.data.curriculum_order`) or
    length-grouped batches (:func:`silkfire.train.data.length_grouped_passes`; HF's own ``group_by_length`` reads
    lengths from ``model_input_names[0]``, LLaVA processors' ``pixel_values``, and silently groups nothing)."""
    if config.curriculum_steps <= 0 and not config.group_by_length:
        return train_data, config.max_steps if config.max_steps > 0 else -1  # <= 0: num_epochs decides (Trainer: -1)
    from silkfire.train.data import PlannedOrder, curriculum_order, group_conversations, length_grouped_passes

    per_step = config.batch_size * config.grad_accum
    steps = config.max_steps if config.max_steps > 0 else math.ceil(
        config.num_epochs * math.ceil(len(train_data) / per_step))
    if config.group_by_length:
        lengths = [len(ids) for ids in train_data.input_ids]
        return PlannedOrder(train_data, length_grouped_passes(lengths, config.batch_size, steps * per_step,
                                                              config.seed)), steps
    conversations = group_conversations(train_records, config.turns_per_sample, config.seed)  # encode's samples
    assert len(conversations) == len(train_data)
    families = [{str(record.get("family")) for record in conversation} for conversation in conversations]
    order = curriculum_order(families, config.curriculum_families, config.curriculum_steps * per_step,
                             steps * per_step, config.seed)
    return PlannedOrder(train_data, order), steps


def _finished(checkpoint: Path) -> bool:
    """Whether the checkpoint was saved at its run's last step."""
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    return int(state.get("global_step", 0)) >= int(state.get("max_steps", 0) or 0) > 0


def _trainer_class() -> type:
    """Trainer whose checkpoints load through ``from_pretrained`` and save without pickles.

    transformers 5.23 saves LLaVA checkpoints with the hub's legacy weight names but ``Trainer`` reloads them
    with a raw ``load_state_dict(strict=False)``, which silently loads nothing on resume. ``from_pretrained``
    applies the name conversion; the copy back is strict, so a mismatch fails loudly.
    """
    from transformers import Trainer

    class SFTTrainer(Trainer):
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            from silkfire.train.data import PlannedOrder

            dataset = self.train_dataset if train_dataset is None else train_dataset
            if isinstance(dataset, PlannedOrder):  # the order is the plan: read it as it is
                import torch

                return torch.utils.data.SequentialSampler(dataset)
            return super()._get_train_sampler(train_dataset)

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            model = self.model if model is None else model
            from silkfire.train.lora import is_lora, load_adapter_checkpoint

            if is_lora(model):  # a LoRA checkpoint holds the adapters (and modules_to_save) only
                load_adapter_checkpoint(model, Path(resume_from_checkpoint))
                return
            loaded = type(model).from_pretrained(
                resume_from_checkpoint, dtype=next(model.parameters()).dtype, local_files_only=True,
                use_safetensors=True,
            )
            model.load_state_dict(loaded.state_dict(), strict=True)
            del loaded

        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            # Model + processor with save_pretrained (safetensors); the training arguments as JSON instead of
            # Trainer's pickled training_args.bin.
            output_dir = output_dir if output_dir is not None else self.args.output_dir
            if not self.args.should_save:
                return
            os.makedirs(output_dir, exist_ok=True)
            self.model.save_pretrained(output_dir, state_dict=state_dict)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            Path(output_dir, "training_args.json").write_text(self.args.to_json_string(), encoding="utf-8")

    return SFTTrainer
