"""Direct Preference Optimisation of a VLM on preference pairs -- a plain loop, short enough to read.

Why not TRL's DPOTrainer: it refuses precomputed reference log-probs for vision data and runs the reference model
every step; here the reference log-probs are computed once (one no-grad pass over the pairs before training,
saved next to the model) and each step is one forward over the concatenated chosen + rejected batch
(benchmarks/dpo_vs_trl.py measures the difference). Loss (Rafailov et al.; Silkie uses beta 0.1)::

    z = beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r)))
    loss = -log sigmoid(z) + rpo_alpha * NLL_token_mean(chosen | pi)

The NLL term (RPO, Pang et al. 2024) keeps the model's answers on the chosen responses: plain DPO raised reward
accuracy but lowered greedy QA accuracy on this task. LoRA through PEFT is an option (Silkie: r 64, alpha 16,
LLM only); the reference is then the model before the adapters (computed before they are added).

Checkpoints (every ``save_steps``) hold the trainable weights, the optimizer and scheduler state, RNG states and
the metric history -- safetensors and JSON only, nothing pickled -- and a resumed run ends with the same weights
and metrics as an uninterrupted one: the data order of each epoch is a function of (seed, epoch) alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from silkfire.io import read_records, write_json
from silkfire.models.config import build_dataclass, to_plain_mapping
from silkfire.train.resume import RESUME_FREE, complete_checkpoints, resume_mode  # noqa: F401 (RESUME_FREE: API)

HISTORY_FIELDS = ("step", "epoch", "loss", "dpo_loss", "nll", "reward_accuracy", "reward_margin", "chosen_reward",
                  "rejected_reward", "chosen_logp", "rejected_logp", "learning_rate", "grad_norm",
                  "eval_loss", "eval_reward_accuracy", "eval_reward_margin")
WINDOW_KEYS = ("loss", "dpo_loss", "nll", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward",
               "chosen_logp", "rejected_logp", "grad_norm")
REFERENCE_FILE = "reference_logps.safetensors"
LLAMA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSettings:
    enabled: bool = False
    r: int = 64
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = LLAMA_MODULES
    llm_only: bool = True


@dataclass(frozen=True)
class DPOConfig:
    """DPO hyper-parameters (conf/silkie/default.yaml `dpo:` documents every key)."""

    beta: float = 0.1
    rpo_alpha: float = 1.0
    learning_rate: float = 1e-4
    num_epochs: float = 1.0
    max_steps: int = 0
    batch_size: int = 16
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.05
    adam_beta2: float = 0.98
    max_grad_norm: float = 1.0
    max_length: int | None = None  # None: the model's context length (silkfire.models.families.context_length)
    eval_fraction: float = 0.05
    logging_steps: int = 5
    save_steps: int = 50
    save_total_limit: int = 2
    ref_batch_size: int = 64
    group_by_length: bool = True
    freeze: tuple[str, ...] = ("vision_tower",)
    lora: LoraSettings = field(default_factory=LoraSettings)
    num_threads: int = 2
    seed: int = 0
    resume: bool | str = "auto"  # auto | true | false (silkfire.train.resume)
    progress: bool = True
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.beta <= 0 or self.rpo_alpha < 0:
            raise ValueError("dpo: beta must be > 0 and rpo_alpha >= 0")
        if self.learning_rate <= 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("dpo: learning_rate must be > 0, batch_size and grad_accum >= 1")
        if self.max_steps <= 0 and self.num_epochs <= 0:
            raise ValueError("dpo: set num_epochs > 0 or max_steps > 0")
        if not 0.0 <= self.eval_fraction < 1.0 or not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError("dpo: eval_fraction and warmup_ratio must be in [0, 1)")
        if self.logging_steps < 1 or self.save_steps < 0 or self.num_threads < 1:
            raise ValueError("dpo: logging_steps and num_threads must be >= 1, save_steps >= 0")
        object.__setattr__(self, "resume", resume_mode(self.resume))

    @classmethod
    def from_mapping(cls, cfg: Any, **overrides: Any) -> DPOConfig:
        values = {**to_plain_mapping(cfg, "dpo config"), **overrides}
        lora = values.pop("lora", None) or {}
        lora = lora if isinstance(lora, LoraSettings) else build_dataclass(LoraSettings, dict(lora), "dpo.lora config")
        config = build_dataclass(cls, {**values, "lora": lora}, "dpo config")
        return cls(**{**asdict(config), "freeze": tuple(config.freeze or ()),
                      "lora": LoraSettings(**{**asdict(lora), "target_modules": tuple(lora.target_modules)})})


@dataclass
class DPOResult:
    model_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


class TrainingStopped(RuntimeError):
    """Raised when a callback asks to stop (tests simulate a killed run with it)."""


# ---- data --------------------------------------------------------------------------------------------------------
@dataclass
class PairData:
    """Pre-encoded pairs: chosen/rejected token ids and labels, one shared pixel tensor, reference log-probs."""

    ids: list[str]
    chosen_ids: list[Any]
    chosen_labels: list[Any]
    rejected_ids: list[Any]
    rejected_labels: list[Any]
    image_index: list[int]
    pixel_values: Any
    ref_chosen: Any = None
    ref_rejected: Any = None
    image_extras: Any = None  # per-image image_sizes / image_grid_thw (LLaVA-NeXT, Qwen2-VL; train.data)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: Sequence[int]) -> PairData:
        take = list(indices)
        pick = (lambda values: None if values is None else values[take])
        return PairData([self.ids[i] for i in take], [self.chosen_ids[i] for i in take],
                        [self.chosen_labels[i] for i in take], [self.rejected_ids[i] for i in take],
                        [self.rejected_labels[i] for i in take], [self.image_index[i] for i in take],
                        self.pixel_values, pick(self.ref_chosen), pick(self.ref_rejected), self.image_extras)


def pair_fields(pair: Mapping[str, Any], index: int, source: str) -> tuple[str, str, str, str, str]:
    """(id, image, prompt, chosen, rejected) of a pair record, or a ValueError naming record and field."""
    image = pair.get("image") if isinstance(pair.get("image"), str) else pair.get("img_path")
    values = {"id": pair.get("id", f"pair-{index}"), "image": image, "prompt": pair.get("prompt"),
              "chosen": pair.get("chosen"), "rejected": pair.get("rejected")}
    for key, value in values.items():
        if not isinstance(value, str) or (key != "prompt" and not value.strip()):
            name = "image' / 'img_path" if key == "image" else key
            raise ValueError(f"{source}: pair {index} (id {pair.get('id')!r}): field '{name}' must be a non-empty "
                             f"string, got {value!r}"[:300])
    return values["id"], values["image"], values["prompt"], values["chosen"], values["rejected"]


def encode_pairs(pairs: Sequence[Mapping[str, Any]], processor: Any, image_root: Path, *, max_length: int | None,
                 progress: bool = True, source: str = "pairs") -> tuple[PairData, list[int]]:
    """Tokenise each pair's prompt + chosen and prompt + rejected once (train.data's encoding: labels only on
    the answer and its </s>); drop pairs with a sequence longer than ``max_length`` (None: keep all).

    Returns the data and the indices (into ``pairs``) of the pairs kept."""
    from silkfire.train.data import encode_sft_records

    if not pairs:
        raise ValueError(f"{source}: no pairs to train on")
    fields = [pair_fields(pair, index, source) for index, pair in enumerate(pairs)]
    # chosen rows first, then rejected rows: row i and n + i are the two sides of pair i (same image index)
    records = [{"image": f[1], "question": f[2], "answer": f[3]} for f in fields]
    records += [{"image": f[1], "question": f[2], "answer": f[4]} for f in fields]
    encoded = encode_sft_records(records, processor, image_root, progress=progress, turns_per_sample=1)
    n = len(fields)
    keep = [i for i in range(n) if max_length is None
            or max(len(encoded.input_ids[i]), len(encoded.input_ids[n + i])) <= max_length]
    data = PairData(
        ids=[fields[i][0] for i in keep],
        chosen_ids=[encoded.input_ids[i] for i in keep], chosen_labels=[encoded.labels[i] for i in keep],
        rejected_ids=[encoded.input_ids[n + i] for i in keep], rejected_labels=[encoded.labels[n + i] for i in keep],
        image_index=[encoded.image_index[i] for i in keep], pixel_values=encoded.pixel_values,
        image_extras=encoded.image_extras,
    )
    return data, keep


def split_pairs(pairs: Sequence[Mapping[str, Any]], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, eval) indices; whole prompts (``source_id``, else prompt + image) go to one side, seeded."""
    if fraction <= 0:
        return list(range(len(pairs))), []
    groups: dict[str, list[int]] = {}
    for index, pair in enumerate(pairs):
        key = str(pair.get("source_id") or f"{pair.get('image') or pair.get('img_path')}\n{pair.get('prompt')}")
        groups.setdefault(key, []).append(index)
    keys = sorted(groups)
    random.Random(f"silkfire-dpo-split/{seed}").shuffle(keys)
    held = max(1, round(fraction * len(keys))) if len(keys) > 1 else 0
    eval_keys = set(keys[:held])
    train = [i for key in sorted(groups) if key not in eval_keys for i in groups[key]]
    held_out = [i for key in sorted(groups) if key in eval_keys for i in groups[key]]
    return sorted(train), sorted(held_out)


def collate_pairs(data: PairData, indices: Sequence[int], pad_token_id: int) -> dict[str, Any]:
    """One batch of 2B rows: the B chosen sequences, then the B rejected ones (right-padded)."""
    import torch

    from silkfire.train.data import IGNORE_INDEX

    ids = [data.chosen_ids[i] for i in indices] + [data.rejected_ids[i] for i in indices]
    labels = [data.chosen_labels[i] for i in indices] + [data.rejected_labels[i] for i in indices]
    length = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), length), pad_token_id, dtype=torch.long)
    label_ids = torch.full((len(ids), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(ids), length), dtype=torch.long)
    for row, (tokens, targets) in enumerate(zip(ids, labels)):
        input_ids[row, :len(tokens)] = tokens
        label_ids[row, :len(targets)] = targets
        mask[row, :len(tokens)] = 1
    from silkfire.train.data import image_batch

    images = [data.image_index[i] for i in indices]
    return {"input_ids": input_ids, "attention_mask": mask, "labels": label_ids,
            **image_batch(data.pixel_values, data.image_extras, images + images)}


def sequence_logps(model: Any, batch: Mapping[str, Any]) -> tuple[Any, Any]:
    """(sum of the answer tokens' log-probs, number of answer tokens) per row, from one forward pass."""
    import torch

    from silkfire.train.data import IGNORE_INDEX

    dtype = next(model.parameters()).dtype
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    # Logits only where an answer token is predicted (the image and prompt positions are most of each row):
    # position t predicts token t + 1, so keep t where labels[t + 1] is trained. Rows come back flattened.
    keep = torch.zeros_like(batch["labels"], dtype=torch.bool)
    keep[:, :-1] = mask
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   pixel_values=batch["pixel_values"].to(dtype), logits_to_keep=keep,
                   **_image_extras(model, batch)).logits.float()
    logits = logits.reshape(-1, logits.shape[-1])
    token_logps = logits.log_softmax(-1).gather(1, labels[mask].unsqueeze(-1)).squeeze(-1)
    rows = torch.arange(labels.shape[0]).unsqueeze(-1).expand_as(labels)[mask]
    sums = torch.zeros(labels.shape[0], dtype=token_logps.dtype).index_add(0, rows, token_logps)
    return sums, mask.sum(-1)


def _image_extras(model: Any, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The family's image inputs beside pixel_values: LLaVA-NeXT's image_sizes, Qwen2-VL's image_grid_thw (with the
    mm_token_type_ids its M-RoPE needs)."""
    from silkfire.train.data import mm_token_type_ids

    extras = {key: batch[key] for key in ("image_sizes", "image_grid_thw") if key in batch}
    if "image_grid_thw" in extras:
        config = model.config if hasattr(model, "config") else model.get_base_model().config
        extras["mm_token_type_ids"] = mm_token_type_ids(batch["input_ids"], config.image_token_id)
    return extras


def dpo_loss(policy_chosen: Any, policy_rejected: Any, ref_chosen: Any, ref_rejected: Any, beta: float) -> tuple[Any, Any, Any]:
    """Sigmoid DPO loss per pair and the implicit rewards beta * (log pi - log ref) of chosen and rejected."""
    import torch.nn.functional as F

    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen_rewards - rejected_rewards), chosen_rewards, rejected_rewards


def batch_loss(model: Any, data: PairData, indices: Sequence[int], pad_token_id: int, config: DPOConfig
               ) -> tuple[Any, dict[str, float]]:
    """Loss of one batch (one concatenated forward) and its metrics."""
    import torch

    batch = collate_pairs(data, indices, pad_token_id)
    logps, counts = sequence_logps(model, batch)
    size = len(indices)
    chosen, rejected = logps[:size], logps[size:]
    ref_chosen, ref_rejected = data.ref_chosen[list(indices)], data.ref_rejected[list(indices)]
    losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, config.beta)
    nll = -chosen.sum() / counts[:size].sum().clamp(min=1)
    loss = losses.mean() + config.rpo_alpha * nll
    with torch.no_grad():
        metrics = {
            "loss": float(loss), "dpo_loss": float(losses.mean()), "nll": float(nll),
            "reward_accuracy": float((chosen_rewards > rejected_rewards).float().mean()),
            "reward_margin": float((chosen_rewards - rejected_rewards).mean()),
            "chosen_reward": float(chosen_rewards.mean()), "rejected_reward": float(rejected_rewards.mean()),
            "chosen_logp": float(chosen.mean()), "rejected_logp": float(rejected.mean()),
        }
    return loss, metrics


def reference_logps(model: Any, data: PairData, pad_token_id: int, batch_size: int, progress: bool = True
                    ) -> tuple[Any, Any]:
    """Log-probs of every chosen and rejected response under the (frozen) reference model, one pass."""
    import torch
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    order = by_length(data, range(len(data)))  # similar lengths together: little padding
    chosen = torch.empty(len(data))
    rejected = torch.empty(len(data))
    with torch.no_grad():
        for start in tqdm(range(0, len(data), batch_size), desc="reference log-probs", unit="batch",
                          disable=not progress):
            indices = order[start:start + batch_size]
            logps, _ = sequence_logps(model, collate_pairs(data, indices, pad_token_id))
            chosen[indices] = logps[:len(indices)]
            rejected[indices] = logps[len(indices):]
    model.train(was_training)
    return chosen, rejected


def by_length(data: PairData, indices: Sequence[int]) -> list[int]:
    """Indices sorted by the longer side of each pair (stable)."""
    return sorted(indices, key=lambda i: max(len(data.chosen_ids[i]), len(data.rejected_ids[i])))


def epoch_order(data: PairData, seed: int, epoch: int, batch_size: int, group_by_length: bool) -> list[int]:
    """The pairs' order in one epoch, a function of (seed, epoch) only (resume-exact).

    With ``group_by_length``: a seeded permutation cut into mega-batches of 32 batches, each sorted by length,
    then the batches shuffled -- batches hold similar lengths (less padding), their order stays random.
    """
    import torch

    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(data), generator=generator).tolist()
    if not group_by_length:
        return order
    mega = 32 * batch_size
    grouped = [i for start in range(0, len(order), mega) for i in by_length(data, order[start:start + mega])]
    batches = [grouped[start:start + batch_size] for start in range(0, len(grouped), batch_size)]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [i for b in shuffled for i in batches[b]]


def evaluate_pairs(model: Any, data: PairData, pad_token_id: int, config: DPOConfig) -> dict[str, float]:
    """Mean loss, reward accuracy and margin over held-out pairs (no gradients)."""
    import torch

    if len(data) == 0:
        return {}
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    with torch.no_grad():
        order = by_length(data, range(len(data)))
        for start in range(0, len(data), config.ref_batch_size):
            indices = order[start:start + config.ref_batch_size]
            _, metrics = batch_loss(model, data, indices, pad_token_id, config)
            for key in ("loss", "reward_accuracy", "reward_margin"):
                totals[key] = totals.get(key, 0.0) + metrics[key] * len(indices)
    model.train(was_training)
    return {f"eval_{key}": value / len(data) for key, value in totals.items()}


# ---- model preparation -------------------------------------------------------------------------------------------
def apply_lora(model: Any, settings: LoraSettings) -> Any:
    """Wrap the model with PEFT LoRA adapters through silkfire.train.lora (only inside the language model when
    ``llm_only``: the ViT's own q/k/v projections stay frozen)."""
    from silkfire.train.lora import LoraOptions
    from silkfire.train.lora import apply_lora as wrap

    options = LoraOptions(r=settings.r, alpha=float(settings.alpha), dropout=settings.dropout,
                          target_modules=tuple(settings.target_modules),
                          within="language_model" if settings.llm_only else None)
    wrapped, _ = wrap(model, options)
    return wrapped


def trainable_state(model: Any) -> dict[str, Any]:
    return {name: parameter.detach().clone().contiguous() for name, parameter in model.named_parameters()
            if parameter.requires_grad}


# ---- checkpoints (safetensors + JSON, nothing pickled) -----------------------------------------------------------
def _save_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any]) -> None:
    import torch
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    opt_state = optimizer.state_dict()
    tensors: dict[str, Any] = {}
    scalars: dict[str, Any] = {}
    for index, values in opt_state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    payload = {**state, "optimizer": {"param_groups": opt_state["param_groups"], "scalars": scalars},
               "scheduler": scheduler.state_dict(), "python_rng": _jsonable(random.getstate())}
    (tmp / "trainer_state.json").write_text(json.dumps(payload, default=_json_default), encoding="utf-8")
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)  # a checkpoint appears whole or not at all (a kill mid-save leaves only the .tmp)


def _load_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    expected = {name for name, p in params.items() if p.requires_grad}
    if set(weights) != expected:
        raise ValueError(f"checkpoint {path}: trainable weights {sorted(set(weights) ^ expected)[:5]} do not match "
                         "this run's model (changed LoRA/freeze settings?); remove the checkpoints to start over")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    tensors = load_file(str(path / "optimizer.safetensors"))
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    for key, value in state["optimizer"]["scalars"].items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": state["optimizer"]["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch"])
    random.setstate(_tupled(state["python_rng"]))
    return state


def _json_default(value: Any) -> Any:
    import torch

    if torch.is_tensor(value):
        return value.item() if value.numel() == 1 else value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def checkpoint_dirs(checkpoints: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a save cut short leaves only a ``.tmp`` folder)."""
    return complete_checkpoints(checkpoints)


def pairs_digest(data: PairData) -> str:
    """Digest of the encoded pairs: ids, token ids and labels of both sides, images and pixel values."""
    from silkfire.train.resume import tensors_digest

    extras = [data.image_extras[key] for key in sorted(data.image_extras or {})]  # none for LLaVA-1.5
    return tensors_digest(data.ids, data.chosen_ids, data.chosen_labels, data.rejected_ids, data.rejected_labels,
                          list(data.image_index), data.pixel_values, *extras)


# ---- training ----------------------------------------------------------------------------------------------------
Callback = Callable[[str, int, dict[str, Any]], None]


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_dpo(
    start: str | Path,
    pairs_path: Path,
    image_root: Path,
    config: DPOConfig,
    out_dir: Path,
    callbacks: Sequence[Callback] = (),
) -> DPOResult:
    """DPO from the model at ``start`` on the pairs of ``pairs_path`` (JSONL; images under ``image_root``).

    Writes ``out_dir/model`` (final model + processor; LoRA adapters merged), ``out_dir/adapter`` (LoRA only),
    ``out_dir/checkpoints/checkpoint-<step>``, ``out_dir/reference_logps.safetensors`` (the reference pass,
    reused on resume), ``out_dir/history.csv`` and ``out_dir/metrics.json``. It continues from the newest checkpoint
    when that carries this run's fingerprint (``config.resume``: auto | true | false, see
    :mod:`silkfire.train.resume`); the decision is printed, set as tags of the active MLflow run and returned in
    the metrics (``resumed_from_step``, ``steps_run``). Each callback is called as
    ``callback(event, step, values)`` with event ``"log"`` (values: the logged metrics) or ``"step"`` (after every
    optimizer step; raise :class:`TrainingStopped` to stop, as a kill would).
    """
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import get_scheduler

    from silkfire.io import file_digest
    from silkfire.models.loading import load_vlm
    from silkfire.train import resume
    from silkfire.train.sft import freeze_parts

    torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    out_dir = Path(out_dir)
    checkpoints = out_dir / "checkpoints"

    model, processor = load_vlm(start, dtype=config.dtype)
    pad_id = processor.tokenizer.pad_token_id
    pairs = read_records(pairs_path)
    started = time.perf_counter()
    from silkfire.models.families import context_length

    # null: as long as the model reads (its context length), whatever its family's image token count
    max_length = config.max_length if config.max_length is not None else context_length(model)
    data, kept = encode_pairs(pairs, processor, image_root, max_length=max_length,
                              progress=config.progress, source=str(pairs_path))
    encode_seconds = time.perf_counter() - started
    if len(data) == 0:
        raise ValueError(f"{pairs_path}: every pair is longer than dpo.max_length={max_length} tokens"
                         f"{'' if config.max_length is not None else ' (the model context length)'}")

    # Continue this run's own checkpoints, or start over: a new run never mixes with an old run's outputs (the
    # reference pass is kept: it is keyed by its own inputs below).
    current = resume.fingerprint(asdict(config), {"pairs": pairs_digest(data),
                                                  "start_model": resume.model_digest(start)})
    decision = resume.decide(checkpoints, current, config.resume, checkpoint_dirs(checkpoints))
    stale = [path for path in out_dir.iterdir() if path.name not in ("checkpoints", REFERENCE_FILE)] \
        if out_dir.is_dir() else []
    resume.prepare(checkpoints, decision, current, clear=stale)
    resume.record(decision, f"train_dpo {out_dir}")

    # The reference pass: once, before any adapter or update; reused when the pairs and start model are the same.
    key = _digest(file_digest(pairs_path), str(start), _model_digest(start), max_length, config.dtype)
    reference_path = out_dir / REFERENCE_FILE
    started = time.perf_counter()
    cached = load_file(str(reference_path)) if reference_path.is_file() else {}
    if cached.get("key") is not None and bytes(cached["key"].tolist()).decode() == key:
        data.ref_chosen, data.ref_rejected = cached["chosen"], cached["rejected"]
    else:
        data.ref_chosen, data.ref_rejected = reference_logps(model, data, pad_id, config.ref_batch_size,
                                                             config.progress)
        save_file({"chosen": data.ref_chosen.contiguous(), "rejected": data.ref_rejected.contiguous(),
                   "key": torch.tensor(list(key.encode()), dtype=torch.uint8)}, str(reference_path))
    reference_seconds = time.perf_counter() - started

    dropped = len(pairs) - len(kept)
    train_idx, eval_idx = split_pairs([pairs[i] for i in kept], config.eval_fraction, config.seed)
    train_data, eval_data = data.subset(train_idx), data.subset(eval_idx)

    frozen = freeze_parts(model, config.freeze)
    if config.lora.enabled:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        model = apply_lora(model, config.lora)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel over all parameters instead of a loop of small ops (most of a tiny model's step on CPU)
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, betas=(0.9, config.adam_beta2),
                                  weight_decay=config.weight_decay, fused=True)
    pairs_per_step = config.batch_size * config.grad_accum
    steps_per_epoch = math.ceil(len(train_data) / pairs_per_step)
    total_steps = config.max_steps if config.max_steps > 0 else math.ceil(config.num_epochs * steps_per_epoch)
    scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=math.ceil(config.warmup_ratio *
                              total_steps), num_training_steps=total_steps)

    history: list[dict[str, Any]] = []
    window: dict[str, float] = {}
    window_steps = 0
    first_step = 0
    if decision.checkpoint is not None:
        state = _load_checkpoint(decision.checkpoint, model, optimizer, scheduler)
        first_step, history, window, window_steps = (int(state["step"]), state["history"], state["window"],
                                                     int(state["window_steps"]))

    def emit(event: str, step: int, values: dict[str, Any]) -> None:
        for callback in callbacks:
            callback(event, step, values)

    from tqdm.auto import tqdm

    started = time.perf_counter()
    order: list[int] = []
    order_epoch = -1
    bar = tqdm(total=total_steps, initial=first_step, desc="dpo", unit="step", disable=not config.progress)
    for step in range(first_step, total_steps):
        epoch, within = divmod(step, steps_per_epoch)
        if epoch != order_epoch:  # the order of an epoch depends on (seed, epoch) only: resume-exact
            order = epoch_order(train_data, config.seed, epoch, pairs_per_step, config.group_by_length)
            order_epoch = epoch
        chunk = order[within * pairs_per_step:(within + 1) * pairs_per_step]
        step_metrics: dict[str, float] = {}
        for micro in range(config.grad_accum):
            indices = chunk[micro * config.batch_size:(micro + 1) * config.batch_size]
            if not indices:
                continue
            loss, metrics = batch_loss(model, train_data, indices, pad_id, config)
            (loss * len(indices) / len(chunk)).backward()
            for name, value in metrics.items():
                step_metrics[name] = step_metrics.get(name, 0.0) + value * len(indices) / len(chunk)
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step_metrics["grad_norm"] = float(grad_norm)
        for name in WINDOW_KEYS:
            window[name] = window.get(name, 0.0) + step_metrics[name]
        window_steps += 1
        done = step + 1
        bar.update(1)
        if done % config.logging_steps == 0 or done == total_steps or done == 1:
            row = {"step": done, "epoch": round(done / steps_per_epoch, 4),
                   "learning_rate": float(scheduler.get_last_lr()[0]),
                   **{name: window[name] / window_steps for name in WINDOW_KEYS}}
            if done == total_steps:
                row.update(evaluate_pairs(model, eval_data, pad_id, config))
            history.append(row)
            window, window_steps = {}, 0
            emit("log", done, row)
        if config.save_steps and done % config.save_steps == 0 and done < total_steps:
            _save_checkpoint(checkpoints / f"checkpoint-{done}", model, optimizer, scheduler,
                             {"step": done, "history": history, "window": window, "window_steps": window_steps,
                              "config": asdict(config)})
            for old in checkpoint_dirs(checkpoints)[:-config.save_total_limit or None]:
                shutil.rmtree(old)
        emit("step", done, step_metrics)
    bar.close()
    train_seconds = time.perf_counter() - started

    model_dir = out_dir / "model"
    if config.lora.enabled:
        model.save_pretrained(str(out_dir / "adapter"))  # adapter weights (safetensors) + adapter_config.json
        from silkfire.train.lora import merge_lora

        model = merge_lora(model)
    model.save_pretrained(str(model_dir))
    processor.save_pretrained(str(model_dir))
    steps_run = total_steps - first_step
    last = history[-1] if history else {}
    metrics: dict[str, Any] = {
        **{key: float(last[key]) for key in HISTORY_FIELDS if key not in ("step", "epoch") and key in last},
        "pairs_per_second": steps_run * pairs_per_step / train_seconds if train_seconds > 0 and steps_run else math.nan,
        "train_seconds": train_seconds, "reference_seconds": reference_seconds, "encode_seconds": encode_seconds,
        "global_step": total_steps, "train_pairs": len(train_data), "eval_pairs": len(eval_data),
        "dropped_long_pairs": dropped, "trainable_parameters": sum(p.numel() for p in trainable),
        "frozen_parameters": frozen, "resumed_from_step": first_step, "steps_run": steps_run,
    }
    write_history_csv_fields(out_dir / "history.csv", history)
    write_json(out_dir / "metrics.json", metrics)
    return DPOResult(model_dir=model_dir, metrics=metrics, history=history)


def _model_digest(source: str | Path) -> str:
    """Content digest of a local model folder's weights (a hub name is its own identity)."""
    from silkfire.io import file_digest

    path = Path(source)
    if not path.is_dir():
        return str(source)
    return _digest([file_digest(weights) for weights in sorted(path.glob("*.safetensors"))])


def write_history_csv_fields(path: Path, history: Sequence[Mapping[str, Any]]) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({key: row.get(key, "") for key in HISTORY_FIELDS})
