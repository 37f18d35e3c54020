"""Direct Preference Optimisation of a VLM on preference pairs -- a plain loop, short enough to read.

Why not TRL's DPOTrainer: it refuses precomputed reference log-probs for vision data and runs the reference model
every step; here the reference log-probs are computed once (one no-grad pass over the pairs before training,
saved next to the model) and each step is one forward over the concatenated chosen + rejected batch
(benchmarks/dpo_vs_trl.py measures the difference). With ``shared_prefix`` a pair is one packed row instead of two:
image + prompt once, then both answers, a 4-D attention mask keeping them apart (:func:`pair_logps`; exact, else
two rows with a logged reason). Loss (Rafailov et al.; Silkie uses beta 0.1)::

    z = beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r)))
    loss = -log sigmoid(z) + rpo_alpha * NLL_token_mean(chosen | pi)

The NLL term (RPO, Pang et al. 2024) keeps the model's answers on the chosen responses: plain DPO raised reward
accuracy but lowered greedy QA accuracy on this task. LoRA through PEFT is an option (Silkie: r 64, alpha 16,
LLM only); the reference is then the model before the adapters (computed before they are added).

Checkpoints (every ``save_steps``) hold the trainable weights, the optimizer and scheduler state, RNG states and
the metric history -- safetensors and JSON only, nothing pickled -- and a resumed run ends with the same weights
and metrics as an uninterrupted one: the data order of each epoch is a function of (seed, epoch) alone.

Device and precision follow :mod:`silkfire.runtime` (``silkie.dpo.device/dtype/gradient_checkpointing`` follow
``runtime.*``): float32 master weights, forward passes (reference, training, eval) under bf16 autocast when the
dtype resolves to bfloat16; the model is saved in the start checkpoint's dtype.

Several processes (``accelerate launch ... -m silkfire.train.launch_dpo``): ``batch_size`` is per process. Every
process reads and encodes all pairs and walks the same seeded order; each optimizer step takes ``batch_size x
grad_accum x processes`` pairs, process k the k-th ``batch_size`` slice of each micro-batch, and every loss term is
normalised by the counts of the whole *global* micro-batch (pairs, chosen-answer tokens), so N processes x B pairs
follow the loss curve of 1 process x N*B (tests/train/test_launch_dpo.py). The reference pass is sharded (batch b
on process b mod N, summed). DDP keeps the checkpoint format of one process (rank 0 writes it, with every
process's RNG state); DeepSpeed ZeRO / FSDP shard the optimizer (and weights), and their checkpoints hold
accelerate's ``save_state`` folder instead (docs/scaling.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from silkfire.io import read_records, write_json
from silkfire.models.config import build_dataclass, to_plain_mapping
from silkfire.runtime import Runtime
from silkfire.train.resume import RESUME_FREE, complete_checkpoints, resume_mode  # noqa: F401 (RESUME_FREE: API)
from silkfire.train.callbacks import Callback, TrainingStopped  # noqa: F401 (TrainingStopped: raised by callbacks)
from silkfire.train.lora import LoraOptions, apply_lora

HISTORY_FIELDS = ("step", "epoch", "loss", "dpo_loss", "nll", "reward_accuracy", "reward_margin", "chosen_reward",
                  "rejected_reward", "chosen_logp", "rejected_logp", "learning_rate", "grad_norm",
                  "eval_loss", "eval_reward_accuracy", "eval_reward_margin", "image_reward_accuracy",
                  "eval_image_reward_accuracy")  # the last two: loss mdpo only
WINDOW_KEYS = ("loss", "dpo_loss", "nll", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward",
               "chosen_logp", "rejected_logp", "grad_norm")
REFERENCE_FILE = "reference_logps.safetensors"
LLAMA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# Silkie's LoRA: r 64, alpha 16, dropout 0.05 on the language model's attention and MLP projections
SILKIE_LORA = LoraOptions(r=64, alpha=16.0, dropout=0.05, target_modules=LLAMA_MODULES, within="language_model")


# sigmoid: Rafailov et al.'s DPO (+ rpo_alpha * NLL of the chosen answer). mdpo (Wang et al. 2024, arXiv 2406.11839):
# the same, plus the image-conditional term -log sigmoid(beta * [(log pi(c|m) - log ref(c|m)) - (log pi(c|m') -
# log ref(c|m'))]) -- the chosen answer must be likelier with the real image m than with a corrupted one m' (a
# seeded random crop keeping <= mdpo_keep of the area, resized back) -- and the anchor -log sigmoid(beta * (log
# pi(c|m) - log ref(c|m)) - mdpo_anchor), which keeps the chosen reward from falling. Like the released trainer, the
# three terms are summed with equal weights.
LOSSES = ("sigmoid", "mdpo")


@dataclass(frozen=True)
class DPOConfig:
    """DPO hyper-parameters. conf/silkie/default.yaml `dpo:` documents every key and is where defaults are decided:
    these mirror it (tests/train/test_config_defaults.py)."""

    beta: float = 0.1
    rpo_alpha: float = 1.0
    learning_rate: float = 1e-4
    num_epochs: float = 2.0
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
    eval_steps: int = 10  # held-out preference accuracy every N steps (0: at the end only); always at the end
    save_steps: int = 50
    save_total_limit: int = 2
    ref_batch_size: int = 64
    group_by_length: bool = True
    freeze: tuple[str, ...] = ("vision_tower",)
    lora: LoraOptions | None = SILKIE_LORA  # the one LoRA schema (silkfire.train.lora); None = full fine-tuning
    num_threads: int = 2
    seed: int = 0
    resume: bool | str = "auto"  # auto | true | false (silkfire.train.resume)
    progress: bool = True
    dtype: str = "float32"  # compute precision (silkfire.runtime): auto | float32 | bfloat16 (fp32 master + autocast)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (runtime.device)
    gradient_checkpointing: bool = False  # runtime.gradient_checkpointing
    shared_prefix: bool = True  # image + prompt once per pair (pair_logps); False: chosen and rejected rows apart
    loss: str = "sigmoid"  # sigmoid (DPO + rpo_alpha NLL) | mdpo (+ image-conditional and anchored terms, LOSSES)
    mdpo_keep: float = 0.2  # mdpo: the corrupted image keeps a random crop of at most this share of the area
    mdpo_anchor: float = 0.0  # mdpo: the anchor delta the chosen reward is pushed above

    def __post_init__(self) -> None:
        if self.beta <= 0 or self.rpo_alpha < 0:
            raise ValueError("dpo: beta must be > 0 and rpo_alpha >= 0")
        if self.learning_rate <= 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("dpo: learning_rate must be > 0, batch_size and grad_accum >= 1")
        if self.max_steps <= 0 and self.num_epochs <= 0:
            raise ValueError("dpo: set num_epochs > 0 or max_steps > 0")
        if not 0.0 <= self.eval_fraction < 1.0 or not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError("dpo: eval_fraction and warmup_ratio must be in [0, 1)")
        if self.logging_steps < 1 or self.save_steps < 0 or self.eval_steps < 0 or self.num_threads < 1:
            raise ValueError("dpo: logging_steps and num_threads must be >= 1, save_steps and eval_steps >= 0")
        if self.loss not in LOSSES:
            raise ValueError(f"dpo: loss must be one of {list(LOSSES)}, got {self.loss!r}")
        if not 0.0 < self.mdpo_keep <= 1.0:
            raise ValueError(f"dpo: mdpo_keep must be in (0, 1], got {self.mdpo_keep}")
        object.__setattr__(self, "resume", resume_mode(self.resume))
        object.__setattr__(self, "freeze", tuple(self.freeze or ()))
        # a partial mapping keeps Silkie's recipe for the keys it leaves out; `enabled: false` becomes None
        object.__setattr__(self, "lora", LoraOptions.from_mapping(self.lora, base=SILKIE_LORA))

    @classmethod
    def from_mapping(cls, cfg: Any, **overrides: Any) -> DPOConfig:
        return build_dataclass(cls, {**to_plain_mapping(cfg, "dpo config"), **overrides}, "dpo config")


@dataclass
class DPOResult:
    model_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


# ---- data --------------------------------------------------------------------------------------------------------
@dataclass
class PairData:
    """Pre-encoded pairs: chosen/rejected token ids and labels, the images (a train.data.ImageStore: processed when a
    batch reads them), reference log-probs."""

    ids: list[str]
    chosen_ids: list[Any]
    chosen_labels: list[Any]
    rejected_ids: list[Any]
    rejected_labels: list[Any]
    image_index: list[int]
    pixel_values: Any  # a train.data.ImageStore (with the family's image_sizes / image_grid_thw)
    ref_chosen: Any = None
    ref_rejected: Any = None
    images: list[str] | None = None  # each pair's image path (mdpo: its corrupted copy is made per batch)
    ref_corrupt: Any = None  # mdpo: reference log-probs of the chosen answer given the corrupted image
    corruptor: Any = None  # mdpo: an ImageCorruptor

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: Sequence[int]) -> PairData:
        take = list(indices)
        pick = (lambda values: None if values is None else values[take])
        return PairData([self.ids[i] for i in take], [self.chosen_ids[i] for i in take],
                        [self.chosen_labels[i] for i in take], [self.rejected_ids[i] for i in take],
                        [self.rejected_labels[i] for i in take], [self.image_index[i] for i in take],
                        self.pixel_values, pick(self.ref_chosen), pick(self.ref_rejected),
                        None if self.images is None else [self.images[i] for i in take], pick(self.ref_corrupt),
                        self.corruptor)


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
    from silkfire.train.data import encode_sft_to_disk

    if not pairs:
        raise ValueError(f"{source}: no pairs to train on")
    fields = [pair_fields(pair, index, source) for index, pair in enumerate(pairs)]
    # chosen rows first, then rejected rows: row i and n + i are the two sides of pair i (same image index)
    records = [{"image": f[1], "question": f[2], "answer": f[3]} for f in fields]
    records += [{"image": f[1], "question": f[2], "answer": f[4]} for f in fields]
    encoded = encode_sft_to_disk(records, processor, image_root, progress=progress, turns_per_sample=1)
    n = len(fields)
    keep = [i for i in range(n) if max_length is None or max(encoded.lengths[i], encoded.lengths[n + i]) <= max_length]
    # The token rows are read into memory (benchmarks/dpo_vs_trl.py edits them in place); the images stay lazy.
    data = PairData(
        ids=[fields[i][0] for i in keep],
        chosen_ids=[encoded.input_ids[i] for i in keep], chosen_labels=[encoded.labels[i] for i in keep],
        rejected_ids=[encoded.input_ids[n + i] for i in keep], rejected_labels=[encoded.labels[n + i] for i in keep],
        image_index=[int(encoded.image_index[i]) for i in keep], pixel_values=encoded.images,
        images=[fields[i][1] for i in keep],
    )
    encoded.close()
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
    from silkfire.train.data import pad_rows

    input_ids, label_ids, mask = pad_rows(
        [data.chosen_ids[i] for i in indices] + [data.rejected_ids[i] for i in indices],
        [data.chosen_labels[i] for i in indices] + [data.rejected_labels[i] for i in indices], pad_token_id)

    images = [data.image_index[i] for i in indices]
    return {"input_ids": input_ids, "attention_mask": mask, "labels": label_ids,
            **data.pixel_values.batch(images + images)}


def sequence_logps(model: Any, batch: Mapping[str, Any], runtime: Runtime | None = None) -> tuple[Any, Any]:
    """(sum of the answer tokens' log-probs, number of answer tokens) per row, from one forward pass (on the
    model's device, under ``runtime``'s autocast)."""
    from contextlib import nullcontext

    import torch

    from silkfire.train.data import IGNORE_INDEX

    parameter = next(model.parameters())
    dtype, device = parameter.dtype, parameter.device
    batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    # Logits only where an answer token is predicted (the image and prompt positions are most of each row):
    # position t predicts token t + 1, so keep t where labels[t + 1] is trained. Rows come back flattened.
    keep = torch.zeros_like(batch["labels"], dtype=torch.bool)
    keep[:, :-1] = mask
    with runtime.autocast() if runtime is not None else nullcontext():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       pixel_values=batch["pixel_values"].to(dtype), logits_to_keep=keep,
                       **_image_extras(model, batch)).logits
    logits = logits.float().reshape(-1, logits.shape[-1])
    token_logps = logits.log_softmax(-1).gather(1, labels[mask].unsqueeze(-1)).squeeze(-1)
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(-1).expand_as(labels)[mask]
    sums = torch.zeros(labels.shape[0], dtype=token_logps.dtype, device=labels.device).index_add(0, rows, token_logps)
    return sums, mask.sum(-1)


def _image_extras(model: Any, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The family's image inputs beside pixel_values: LLaVA-NeXT's image_sizes, Qwen2-VL's image_grid_thw (with the
    mm_token_type_ids its M-RoPE needs)."""
    from silkfire.train.data import mm_token_type_ids

    extras = {key: batch[key] for key in ("image_sizes", "image_grid_thw") if key in batch}
    if "image_grid_thw" in extras:
        model = getattr(model, "module", model)  # under DDP (accelerate launch) the model is wrapped
        config = model.config if hasattr(model, "config") else model.get_base_model().config
        extras["mm_token_type_ids"] = mm_token_type_ids(batch["input_ids"], config.image_token_id)
    return extras


# ---- the shared prefix: image + prompt once per pair -----------------------------------------------------------
# Chosen and rejected share the image and the question (~83% of a row's tokens on the default world, and the vision
# tower's work). With ``shared_prefix`` each pair is one packed row [prefix, chosen answer, rejected answer]: a 4-D
# attention mask lets the rejected answer see the prefix and itself but not the chosen answer, and its position ids
# restart right after the prefix, so every answer token sees exactly the keys (and positions) it sees in its own
# row -- the same log-probs and gradients, one forward, the vision tower once per pair. Qwen2-VL's M-RoPE positions
# of the prefix come from the model's own get_rope_index (run on the prefixes); answer tokens are text, one position
# each after the prefix's largest. A model or batch where that cannot hold exactly keeps the two-row computation,
# saying why (once per reason).
PACKED_FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl")  # each: tests/train/test_dpo_shared_prefix.py
MROPE_FAMILIES = ("qwen2_vl", "qwen2_5_vl")
PACKED_TEXT_MODELS = ("llama", "mistral", "qwen2", "qwen2_vl_text", "qwen2_5_vl_text")  # causal: mask + positions
PACKED_ATTENTION = ("sdpa", "eager")  # take a custom 4-D mask as it is (flash-attention and flex do not)
_FALLBACKS: set[str] = set()


def _base_config(model: Any) -> Any:
    model = getattr(model, "module", model)  # DDP
    return model.config if hasattr(model, "config") else model.get_base_model().config


def shared_prefix_unsupported(model: Any) -> str | None:
    """None when the packed pair rows compute exactly the two-row log-probs for ``model``, else the reason."""
    from silkfire.models.families import UnsupportedModel, family_for_type

    config = _base_config(model)
    try:
        family = family_for_type(getattr(config, "model_type", None)).name
    except UnsupportedModel:
        family = str(getattr(config, "model_type", None))
    if family not in PACKED_FAMILIES:
        return f"family {family!r} is not one of {list(PACKED_FAMILIES)} (not verified exact)"
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "model_type", None) not in PACKED_TEXT_MODELS:
        return f"language model {getattr(text, 'model_type', None)!r} is not one of {list(PACKED_TEXT_MODELS)}"
    layer_types = getattr(text, "layer_types", None)
    sliding = (any(kind != "full_attention" for kind in layer_types) if layer_types
               else getattr(text, "sliding_window", None) is not None and getattr(text, "use_sliding_window", True))
    if sliding:
        return "sliding-window attention layers (their mask is built from a 2-D mask, a custom 4-D one replaces it)"
    attention = getattr(text, "_attn_implementation", None)
    if attention not in PACKED_ATTENTION:
        return f"attention implementation {attention!r} does not take a custom 4-D mask (sdpa and eager do)"
    return None


def _fallback(reason: str) -> None:
    """Log (once per kind of reason: the text before any ' (pair ') that a batch keeps two rows per pair."""
    import logging

    kind = reason.split(" (pair ")[0]
    if kind not in _FALLBACKS:
        _FALLBACKS.add(kind)
        logging.getLogger(__name__).warning("dpo.shared_prefix: two rows per pair instead of one: %s", reason)


def _answer_span(labels: Any) -> tuple[int, int] | None:
    """(first, last) index of the trained tokens of one side, None when there is none."""
    from silkfire.train.data import IGNORE_INDEX

    trained = (labels != IGNORE_INDEX).nonzero().flatten()
    return (int(trained[0]), int(trained[-1])) if len(trained) else None


def collate_packed(data: PairData, indices: Sequence[int], pad_token_id: int, *, additive_dtype: Any = None
                   ) -> dict[str, Any] | str:
    """One packed row per pair, or the reason the batch cannot be packed exactly.

    Row i: the shared prefix ``ids[:p]`` (every token before the first trained token of either side, which must be
    the same in both), then the chosen side's tokens ``p .. last trained - 1``, then the rejected side's (a token
    that is only a target is never an input). Position ``p - 1`` predicts the first answer token of both sides.
    Returns the model inputs (``attention_mask`` 4-D: bool, or additive in ``additive_dtype`` for eager attention;
    ``position_ids``; ``logits_to_keep``: every position from ``p - 1`` to the row's end) and ``targets``:
    ``(flat logit index, token, output row)`` with output rows 0..B-1 the chosen sides, B..2B-1 the rejected ones.
    """
    import torch

    from silkfire.train.data import IGNORE_INDEX

    size = len(indices)
    rows = []
    for i in indices:
        chosen, rejected = data.chosen_ids[i], data.rejected_ids[i]
        spans = _answer_span(data.chosen_labels[i]), _answer_span(data.rejected_labels[i])
        if spans[0] is None or spans[1] is None:
            return f"a side without trained tokens (pair {data.ids[i]!r})"
        p = min(spans[0][0], spans[1][0])
        if p < 1 or not torch.equal(chosen[:p], rejected[:p]):
            return f"chosen and rejected tokens differ before the answer (pair {data.ids[i]!r})"
        rows.append((p, chosen[p:spans[0][1]], rejected[p:spans[1][1]]))
    length = max(p + len(c) + len(r) for p, c, r in rows)
    input_ids = torch.full((size, length), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((size, length), dtype=torch.long)
    allowed = torch.eye(length, dtype=torch.bool).repeat(size, 1, 1)  # padding attends to itself only (no NaN)
    keep = torch.zeros((size, length), dtype=torch.bool)
    flat, tokens, out_rows = [], [], []
    offset = 0
    causal = torch.ones((length, length), dtype=torch.bool).tril()
    for row, (i, (p, chosen, rejected)) in enumerate(zip(indices, rows)):
        lc, lr = len(chosen), len(rejected)
        end_c, end = p + lc, p + lc + lr
        input_ids[row, :p] = data.chosen_ids[i][:p]
        input_ids[row, p:end_c] = chosen
        input_ids[row, end_c:end] = rejected
        position_ids[row, :end_c] = torch.arange(end_c)
        position_ids[row, end_c:end] = torch.arange(p, p + lr)
        allowed[row, :end_c, :end_c] = causal[:end_c, :end_c]
        allowed[row, end_c:end, :p] = True
        allowed[row, end_c:end, end_c:end] = causal[:lr, :lr]
        keep[row, p - 1:end] = True
        # kept logits of this row, flattened: p - 1 (both sides' first token), the chosen inputs, the rejected ones
        for side, (labels, first_input, count) in enumerate(((data.chosen_labels[i], 1, lc),
                                                            (data.rejected_labels[i], 1 + lc, lr))):
            targets = labels[p:p + count + 1]
            logit = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(first_input, first_input + count)])
            trained = targets != IGNORE_INDEX
            flat.append(offset + logit[trained])
            tokens.append(targets[trained])
            out_rows.append(torch.full((int(trained.sum()),), row + side * size, dtype=torch.long))
        offset += end - (p - 1)
    mask = allowed.unsqueeze(1)
    if additive_dtype is not None:
        mask = torch.zeros(mask.shape, dtype=additive_dtype).masked_fill(~mask, torch.finfo(additive_dtype).min)
    images = [data.image_index[i] for i in indices]
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids, "logits_to_keep": keep,
            "prefix_lengths": torch.tensor([row[0] for row in rows]),
            "targets": (torch.cat(flat), torch.cat(tokens), torch.cat(out_rows)),
            **data.pixel_values.batch(images)}


def packed_logps(model: Any, batch: Mapping[str, Any], rows: int, runtime: Runtime | None = None
                 ) -> tuple[Any, Any]:
    """:func:`sequence_logps` of a :func:`collate_packed` batch: (sums, counts) of the 2B sides, chosen first."""
    from contextlib import nullcontext

    import torch

    parameter = next(model.parameters())
    dtype, device = parameter.dtype, parameter.device
    flat, tokens, out_rows = (value.to(device) for value in batch["targets"])
    inputs = {key: value.to(device, non_blocking=True) for key, value in batch.items() if key != "targets"}
    position_ids = inputs["position_ids"]
    config = _base_config(model)
    if config.model_type in MROPE_FAMILIES:
        position_ids = _mrope_positions(model, config, inputs)
    with runtime.autocast() if runtime is not None else nullcontext():
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                       position_ids=position_ids, pixel_values=inputs["pixel_values"].to(dtype),
                       logits_to_keep=inputs["logits_to_keep"], use_cache=False,
                       **_image_extras(model, inputs)).logits
    logits = logits.float().reshape(-1, logits.shape[-1])
    token_logps = logits[flat].log_softmax(-1).gather(1, tokens.unsqueeze(-1)).squeeze(-1)
    sums = torch.zeros(rows, dtype=token_logps.dtype, device=device).index_add(0, out_rows, token_logps)
    counts = torch.zeros(rows, dtype=torch.long, device=device).index_add(0, out_rows, torch.ones_like(out_rows))
    return sums, counts


def _mrope_positions(model: Any, config: Any, inputs: Mapping[str, Any]) -> Any:
    """Qwen2-VL's / Qwen2.5-VL's (3, B, L) position ids of a packed batch: the prefixes' from the model's
    get_rope_index (what it computes for a whole row, whose answer comes after the prefix), then each answer's text
    positions (one per token, all three rows equal) from the prefix's largest position + 1 -- for the chosen and
    again for the rejected one."""
    import torch

    from silkfire.train.data import mm_token_type_ids

    rope_index = next(module.get_rope_index for module in model.modules()
                      if callable(getattr(type(module), "get_rope_index", None)))
    ids, prefix = inputs["input_ids"], inputs["prefix_lengths"]
    longest = int(prefix.max())
    prefix_mask = (torch.arange(longest, device=ids.device) < prefix[:, None]).long()
    prefix_ids = ids[:, :longest]
    positions, _ = rope_index(prefix_ids, mm_token_type_ids=mm_token_type_ids(prefix_ids, config.image_token_id),
                              image_grid_thw=inputs["image_grid_thw"], attention_mask=prefix_mask)
    start = positions.amax(dim=(0, 2)) + 1  # masked (other rows' answer) places hold 0
    text = (inputs["position_ids"] - prefix[:, None] + start[:, None]).clamp(min=0)  # 1-D p.. -> start..
    out = text.unsqueeze(0).repeat(3, 1, 1)
    out[:, :, :longest] = torch.where(prefix_mask.bool(), positions, out[:, :, :longest])
    return out


def pair_logps(model: Any, data: PairData, indices: Sequence[int], pad_token_id: int,
               runtime: Runtime | None = None, shared_prefix: bool = False) -> tuple[Any, Any]:
    """(answer log-prob sums, answer token counts) of the B pairs at ``indices``: 2B values, the chosen sides
    first. ``shared_prefix``: one packed row per pair where that is exact (see above), else two rows per pair."""
    if shared_prefix:
        reason = shared_prefix_unsupported(model)
        if reason is None:
            text = _base_config(model)
            text = text.get_text_config() if hasattr(text, "get_text_config") else text
            eager = getattr(text, "_attn_implementation", None) == "eager"
            batch = collate_packed(data, indices, pad_token_id,
                                   additive_dtype=next(model.parameters()).dtype if eager else None)
            if not isinstance(batch, str):
                return packed_logps(model, batch, 2 * len(indices), runtime)
            reason = batch
        _fallback(reason)
    return sequence_logps(model, collate_pairs(data, indices, pad_token_id), runtime)


@dataclass(frozen=True)
class ImageCorruptor:
    """mDPO's corrupted condition m': a random crop keeping at most ``keep`` of the image's area (share and place
    seeded by the pair id, so the reference pass and every epoch see the same m'), resized back to the image's size
    so its image-token count and the encoded sequence stay as they are; then processed like the real image. Made per
    batch from the image file: nothing is stored per pair."""

    processor: Any
    image_root: Path
    keep: float

    def crop(self, image: Any, key: str) -> Any:
        from PIL import Image

        rng = random.Random(f"silkfire-mdpo-crop/{key}")
        share = rng.uniform(min(0.01, self.keep), self.keep)
        width, height = image.size
        crop_w, crop_h = (max(1, round(side * math.sqrt(share))) for side in (width, height))
        left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
        return image.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.Resampling.BILINEAR)

    def inputs(self, keys: Sequence[str], paths: Sequence[str]) -> dict[str, Any]:
        from silkfire.train.data import collate_images, image_inputs, load_image

        images = [self.crop(load_image(self.image_root, path), key) for key, path in zip(keys, paths, strict=True)]
        return collate_images(image_inputs(self.processor, images))


def corrupt_logps(model: Any, data: PairData, indices: Sequence[int], pad_token_id: int,
                  runtime: Runtime | None = None) -> Any:
    """Answer log-prob sums of the chosen responses at ``indices`` given their corrupted images (mdpo)."""
    from silkfire.train.data import pad_rows

    if data.corruptor is None or data.images is None:
        raise ValueError("mdpo: the pairs carry no image corruptor (train_dpo sets it for loss=mdpo)")
    input_ids, label_ids, mask = pad_rows([data.chosen_ids[i] for i in indices],
                                          [data.chosen_labels[i] for i in indices], pad_token_id)
    images = data.corruptor.inputs([data.ids[i] for i in indices], [data.images[i] for i in indices])
    logps, _ = sequence_logps(model, {"input_ids": input_ids, "attention_mask": mask, "labels": label_ids, **images},
                              runtime)
    return logps


def mdpo_loss(policy_chosen: Any, policy_rejected: Any, policy_corrupt: Any, ref_chosen: Any, ref_rejected: Any,
              ref_corrupt: Any, beta: float, anchor: float) -> tuple[Any, Any, Any, Any]:
    """mDPO per pair (see :data:`LOSSES`): DPO + image-conditional + anchored terms; the implicit rewards of chosen,
    rejected and chosen-given-the-corrupted-image."""
    import torch.nn.functional as F

    dpo, chosen_rewards, rejected_rewards = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    corrupt_rewards = beta * (policy_corrupt - ref_corrupt)
    losses = dpo - F.logsigmoid(chosen_rewards - corrupt_rewards) - F.logsigmoid(chosen_rewards - anchor)
    return losses, chosen_rewards, rejected_rewards, corrupt_rewards


def preference_terms(model: Any, data: PairData, indices: Sequence[int], pad_token_id: int, config: DPOConfig,
                     runtime: Runtime | None = None) -> tuple[Any, Any, Any, Any, tuple[Any, Any, Any]]:
    """One batch under ``config.loss``: losses per pair, chosen and rejected answer log-probs, the chosen answers'
    token counts, and the rewards (chosen, rejected, chosen given the corrupted image -- None unless mdpo)."""
    logps, counts = pair_logps(model, data, indices, pad_token_id, runtime, config.shared_prefix)
    size = len(indices)
    chosen, rejected = logps[:size], logps[size:]
    ref_chosen = data.ref_chosen[list(indices)].to(logps.device)
    ref_rejected = data.ref_rejected[list(indices)].to(logps.device)
    if config.loss == "mdpo":
        corrupt = corrupt_logps(model, data, indices, pad_token_id, runtime)
        losses, chosen_rewards, rejected_rewards, corrupt_rewards = mdpo_loss(
            chosen, rejected, corrupt, ref_chosen, ref_rejected, data.ref_corrupt[list(indices)].to(logps.device),
            config.beta, config.mdpo_anchor)
    else:
        losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, config.beta)
        corrupt_rewards = None
    return losses, chosen, rejected, counts[:size], (chosen_rewards, rejected_rewards, corrupt_rewards)


def dpo_loss(policy_chosen: Any, policy_rejected: Any, ref_chosen: Any, ref_rejected: Any, beta: float) -> tuple[Any, Any, Any]:
    """Sigmoid DPO loss per pair and the implicit rewards beta * (log pi - log ref) of chosen and rejected."""
    import torch.nn.functional as F

    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen_rewards - rejected_rewards), chosen_rewards, rejected_rewards


def batch_loss(model: Any, data: PairData, indices: Sequence[int], pad_token_id: int, config: DPOConfig,
               runtime: Runtime | None = None) -> tuple[Any, dict[str, float]]:
    """Loss of one batch (one concatenated forward) and its metrics."""
    import torch

    losses, chosen, rejected, counts, rewards = preference_terms(model, data, indices, pad_token_id, config, runtime)
    chosen_rewards, rejected_rewards, corrupt_rewards = rewards
    nll = -chosen.sum() / counts.sum().clamp(min=1)
    loss = losses.mean() + config.rpo_alpha * nll
    with torch.no_grad():
        metrics = {
            "loss": float(loss), "dpo_loss": float(losses.mean()), "nll": float(nll),
            "reward_accuracy": float((chosen_rewards > rejected_rewards).float().mean()),
            "reward_margin": float((chosen_rewards - rejected_rewards).mean()),
            "chosen_reward": float(chosen_rewards.mean()), "rejected_reward": float(rejected_rewards.mean()),
            "chosen_logp": float(chosen.mean()), "rejected_logp": float(rejected.mean()),
        }
        if corrupt_rewards is not None:  # the real image makes the chosen answer likelier than the corrupted one
            metrics["image_reward_accuracy"] = float((chosen_rewards > corrupt_rewards).float().mean())
    return loss, metrics


def reference_logps(model: Any, data: PairData, pad_token_id: int, batch_size: int, progress: bool = True, *,
                    runtime: Runtime | None = None, shard: tuple[int, int] = (0, 1),
                    shared_prefix: bool = False, corrupt: bool = False) -> tuple[Any, ...]:
    """Log-probs of every chosen and rejected response under the (frozen) reference model, one pass
    (``shared_prefix``: see :func:`pair_logps`); with ``corrupt`` (mdpo) a third tensor: the chosen responses given
    their corrupted images.

    ``shard=(k, n)``: only the batches b with b mod n == k (the others stay 0; process k of n sums them up)."""
    import torch
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    order = by_length(data, range(len(data)))  # similar lengths together: little padding
    chosen = torch.zeros(len(data), dtype=torch.float32)
    rejected = torch.zeros(len(data), dtype=torch.float32)
    corrupted = torch.zeros(len(data), dtype=torch.float32)
    rank, processes = shard
    starts = list(range(0, len(data), batch_size))[rank::processes]
    with torch.no_grad():
        for start in tqdm(starts, desc="reference log-probs", unit="batch", disable=not progress):
            indices = order[start:start + batch_size]
            logps, _ = pair_logps(model, data, indices, pad_token_id, runtime, shared_prefix)
            logps = logps.float().cpu()
            chosen[indices] = logps[:len(indices)]
            rejected[indices] = logps[len(indices):]
            if corrupt:
                corrupted[indices] = corrupt_logps(model, data, indices, pad_token_id, runtime).float().cpu()
    model.train(was_training)
    return (chosen, rejected, corrupted) if corrupt else (chosen, rejected)


def by_length(data: PairData, indices: Sequence[int]) -> list[int]:
    """Indices sorted by the longer side of each pair (stable)."""
    return sorted(indices, key=lambda i: max(len(data.chosen_ids[i]), len(data.rejected_ids[i])))


def epoch_order(data: PairData, seed: int, epoch: int, batch_size: int, group_by_length: bool) -> list[int]:
    """The pairs' order in one epoch, a function of (seed, epoch) only (resume-exact).

    With ``group_by_length``: a seeded permutation cut into mega-batches of 32 batches, each sorted by length,
    then the batches shuffled -- batches hold similar lengths (less padding), their order stays random.
    """
    import torch

    from silkfire.train.data import length_grouped

    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(data), generator=generator).tolist()
    if not group_by_length:
        return order
    lengths = [max(len(chosen), len(rejected)) for chosen, rejected in zip(data.chosen_ids, data.rejected_ids)]
    return length_grouped(order, lengths, batch_size, generator)


def evaluate_pairs(model: Any, data: PairData, pad_token_id: int, config: DPOConfig,
                   runtime: Runtime | None = None) -> dict[str, float]:
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
            _, metrics = batch_loss(model, data, indices, pad_token_id, config, runtime)
            for key in ("loss", "reward_accuracy", "reward_margin", "image_reward_accuracy"):
                if key in metrics:
                    totals[key] = totals.get(key, 0.0) + metrics[key] * len(indices)
    model.train(was_training)
    return {f"eval_{key}": value / len(data) for key, value in totals.items()}


# ---- model preparation -------------------------------------------------------------------------------------------
def trainable_state(model: Any) -> dict[str, Any]:
    return {name: parameter.detach().to("cpu", copy=True).contiguous() for name, parameter in model.named_parameters()
            if parameter.requires_grad}


# ---- one process or N (accelerate launch) -------------------------------------------------------------------------
SHARDED_STATE = "accelerate_state"  # a DeepSpeed/FSDP checkpoint's accelerate.save_state folder


class _Job:
    """This process's part of a DPO run: a plain single process, or process k of N under ``accelerate launch``
    (DDP, DeepSpeed ZeRO or FSDP, whatever the launch config says; gloo on CPUs)."""

    def __init__(self, runtime: Runtime, accelerator: Any = None):
        self.runtime = runtime
        self.accelerator = accelerator
        if accelerator is None:
            self.rank, self.world, self.sharded = 0, 1, False
            self.device = runtime.torch_device()
            self.kind = "single"
        else:
            from accelerate.utils import DistributedType

            self.rank, self.world = accelerator.process_index, accelerator.num_processes
            device = accelerator.device  # "cpu:0" on CPUs
            self.device = type(device)("cpu") if device.type == "cpu" else device
            kind = accelerator.distributed_type
            self.sharded = kind in (DistributedType.DEEPSPEED, DistributedType.FSDP)
            self.kind = {DistributedType.DEEPSPEED: "deepspeed", DistributedType.FSDP: "fsdp"}.get(kind, "ddp")

    @classmethod
    def single(cls, runtime: Runtime) -> _Job:
        return cls(runtime)

    @classmethod
    def from_env(cls, runtime: Runtime) -> _Job:
        """A plain process, or -- when a launcher started several (WORLD_SIZE > 1) -- accelerate's view of it."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls(runtime)
        from accelerate import Accelerator

        from silkfire.runtime import RuntimeConfigError

        launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
        if launched and launched != runtime.mixed_precision:
            raise RuntimeConfigError(
                f"the accelerate config says mixed_precision={launched} but silkie.dpo.dtype (runtime.dtype) resolved "
                f"to {runtime.dtype} (mixed_precision={runtime.mixed_precision}): make them agree (runtime.dtype="
                f"{ {'bf16': 'bfloat16', 'fp16': 'float16', 'no': 'float32'}.get(launched, launched)} or the "
                "config's mixed_precision)")
        return cls(runtime, Accelerator(cpu=not runtime.is_cuda, mixed_precision=runtime.mixed_precision))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def sum(self, tensor: Any) -> Any:
        """The elementwise sum over processes (a CPU tensor back)."""
        if self.accelerator is None:
            return tensor
        import torch.distributed as dist

        moved = tensor.to(self.device)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        return moved.cpu()

    def gather_objects(self, value: Any) -> list[Any]:
        if self.accelerator is None:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def unwrap(self, model: Any) -> Any:
        return model if self.accelerator is None else self.accelerator.unwrap_model(model)

    def prepare(self, model: Any, optimizer: Any, config: DPOConfig) -> tuple[Any, Any]:
        """DDP-wrap the model (DDP) or hand model and optimizer to DeepSpeed / FSDP."""
        if self.accelerator is None:
            return model.to(self.device), optimizer
        if self.kind == "deepspeed":  # "auto" values DeepSpeed cannot infer without a dataloader
            plugin = self.accelerator.state.deepspeed_plugin
            ds = plugin.deepspeed_config
            ds["train_micro_batch_size_per_gpu"] = config.batch_size
            ds["gradient_accumulation_steps"] = config.grad_accum
            ds["train_batch_size"] = config.batch_size * config.grad_accum * self.world
            ds["gradient_clipping"] = config.max_grad_norm
            hidden = model.config.get_text_config().hidden_size
            for key, value in (("reduce_bucket_size", hidden * hidden),
                               ("stage3_prefetch_bucket_size", int(0.9 * hidden * hidden)),
                               ("stage3_param_persistence_threshold", 10 * hidden)):
                if ds.get("zero_optimization", {}).get(key) == "auto":
                    ds["zero_optimization"][key] = value
        if not self.sharded:
            return self.accelerator.prepare(model), optimizer  # DDP: the plain optimizer over the shared weights
        return self.accelerator.prepare(model, optimizer)

    def no_sync(self, model: Any, last: bool) -> Any:
        """Gradient accumulation: no all-reduce before the last micro-batch of a step."""
        from contextlib import nullcontext

        if self.accelerator is None or last:
            if self.kind == "deepspeed":
                self.accelerator.gradient_state._set_sync_gradients(True)
            return nullcontext()
        if self.kind == "deepspeed":  # the engine's accumulation boundary follows accelerate's sync flag
            self.accelerator.gradient_state._set_sync_gradients(False)
            return nullcontext()
        return self.accelerator.no_sync(model)

    def backward(self, loss: Any) -> None:
        if self.accelerator is None:
            loss.backward()
        elif self.kind == "deepspeed":  # our loss is already normalised over the step: no 1/grad_accum again
            self.accelerator.backward(loss, scale_wrt_gas=False)
        else:
            self.accelerator.backward(loss)

    def clip(self, model: Any, trainable: Sequence[Any], max_norm: float) -> float:
        import torch

        if self.sharded:
            norm = self.accelerator.clip_grad_norm_(model.parameters(), max_norm)
            return float(norm) if norm is not None else math.nan
        return float(torch.nn.utils.clip_grad_norm_(trainable, max_norm))


def _micro_slices(chunk: Sequence[int], config: DPOConfig, world: int, rank: int
                  ) -> list[tuple[list[int], list[int]]]:
    """(global micro-batch, this process's share) for each micro-batch of a step's chunk of pairs."""
    size = config.batch_size * world
    out = []
    for micro in range(config.grad_accum):
        global_micro = list(chunk[micro * size:(micro + 1) * size])
        out.append((global_micro, global_micro[rank * config.batch_size:(rank + 1) * config.batch_size]))
    return out


def _answer_tokens(data: PairData) -> list[int]:
    """Trained tokens of each chosen answer (the NLL term's denominator)."""
    from silkfire.train.data import IGNORE_INDEX

    return [int((labels[1:] != IGNORE_INDEX).sum()) for labels in data.chosen_labels]


STEP_SUMS = ("dpo", "chosen", "rejected", "chosen_reward", "rejected_reward", "correct", "image_correct")


def _micro_terms(model: Any, data: PairData, mine: Sequence[int], pad_id: int, config: DPOConfig,
                 runtime: Runtime, pairs: int, tokens: int, chunk: int) -> tuple[Any, Any]:
    """This process's share of a micro-batch: its loss term (summed over processes it is the loss of the whole
    micro-batch, weighted by its share of the step's chunk) and its sums of :data:`STEP_SUMS` (float64)."""
    import torch

    losses, chosen, rejected, _, rewards = preference_terms(model, data, mine, pad_id, config, runtime)
    chosen_rewards, rejected_rewards, corrupt_rewards = rewards
    loss = losses.sum() / chunk + config.rpo_alpha * (-chosen.sum() / max(tokens, 1)) * (pairs / chunk)
    with torch.no_grad():
        image_correct = (chosen_rewards > corrupt_rewards).sum() if corrupt_rewards is not None \
            else chosen_rewards.new_zeros(())
        sums = torch.stack([losses.sum(), chosen.sum(), rejected.sum(), chosen_rewards.sum(), rejected_rewards.sum(),
                            (chosen_rewards > rejected_rewards).sum(), image_correct]).double().cpu()
    return loss, sums


def _step_metrics(sums: Any, micro_pairs: Sequence[int], micro_tokens: Sequence[int], chunk: int,
                  rpo_alpha: float, image_terms: bool = False) -> dict[str, float]:
    """A step's metrics from the micro-batches' summed terms (rows of ``sums``: STEP_SUMS, all processes)."""
    total = sums.sum(0)
    value = dict(zip(STEP_SUMS, (float(v) / chunk for v in total)))
    nll = sum(-float(row[1]) / max(tokens, 1) * pairs / chunk
              for row, pairs, tokens in zip(sums, micro_pairs, micro_tokens) if pairs)
    metrics = {"loss": value["dpo"] + rpo_alpha * nll, "dpo_loss": value["dpo"], "nll": nll,
               "reward_accuracy": value["correct"], "reward_margin": value["chosen_reward"] - value["rejected_reward"],
               "chosen_reward": value["chosen_reward"], "rejected_reward": value["rejected_reward"],
               "chosen_logp": value["chosen"], "rejected_logp": value["rejected"]}
    if image_terms:  # mdpo: the share of pairs whose chosen answer is likelier with the real image than the corrupted
        metrics["image_reward_accuracy"] = value["image_correct"]
    return metrics


# ---- checkpoints (safetensors + JSON, nothing pickled) -----------------------------------------------------------
def _rng_states(job: _Job, runtime: Runtime) -> dict[str, Any]:
    """Every process's torch (and CUDA) RNG state: ``torch``/``cuda`` for process 0, ``torch.<k>`` for process k."""
    import torch

    local = {"torch": torch.get_rng_state()}
    if runtime.is_cuda:
        local["cuda"] = torch.cuda.get_rng_state(job.device)
    states: dict[str, Any] = {}
    for rank, values in enumerate(job.gather_objects(local)):
        for key, value in values.items():
            states[key if rank == 0 else f"{key}.{rank}"] = value
    return states


def _save_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any],
                     job: _Job | None = None, runtime: Runtime | None = None) -> None:
    """Write a checkpoint folder (whole or not at all); every process calls it, process 0 writes."""
    import torch
    from safetensors.torch import save_file

    job = job or _Job.single(runtime or Runtime())
    runtime = runtime or Runtime()
    tmp = path.with_name(path.name + ".tmp")
    if job.main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    job.barrier()
    payload: dict[str, Any] = {**state, "scheduler": scheduler.state_dict(), "python_rng": _jsonable(random.getstate())}
    if job.sharded:  # DeepSpeed / FSDP: weights and optimizer states live in shards; accelerate writes them
        job.accelerator.save_state(str(tmp / SHARDED_STATE))
    else:
        rng = _rng_states(job, runtime)
        if job.main:
            save_file(trainable_state(job.unwrap(model)), str(tmp / "trainable.safetensors"))
            opt_state = optimizer.state_dict()
            tensors: dict[str, Any] = {}
            scalars: dict[str, Any] = {}
            for index, values in opt_state["state"].items():
                for key, value in values.items():
                    if torch.is_tensor(value):
                        tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
                    else:
                        scalars[f"{index}.{key}"] = value
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            save_file({key: value.cpu().contiguous() for key, value in rng.items()}, str(tmp / "rng.safetensors"))
            payload["optimizer"] = {"param_groups": opt_state["param_groups"], "scalars": scalars}
    if job.main:
        (tmp / "trainer_state.json").write_text(json.dumps(payload, default=_json_default), encoding="utf-8")
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)  # a checkpoint appears whole or not at all (a kill mid-save leaves only the .tmp)
    job.barrier()


def _load_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any, job: _Job | None = None,
                     runtime: Runtime | None = None) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    runtime = runtime or Runtime()
    job = job or _Job.single(runtime)
    state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    if job.sharded:
        if not (path / SHARDED_STATE).is_dir():
            raise ValueError(f"checkpoint {path} was written without DeepSpeed/FSDP sharding: resume it with the "
                             "launch it was made with (or remove the checkpoints to start over)")
        job.accelerator.load_state(str(path / SHARDED_STATE))
        scheduler.load_state_dict(state["scheduler"])
        random.setstate(_tupled(state["python_rng"]))
        return state
    if not (path / "trainable.safetensors").is_file():
        raise ValueError(f"checkpoint {path} holds sharded DeepSpeed/FSDP states: resume it under the same "
                         "accelerate config (or remove the checkpoints to start over)")
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
    rng = load_file(str(path / "rng.safetensors"))
    suffix = f".{job.rank}" if job.rank else ""
    torch.set_rng_state(rng.get(f"torch{suffix}", rng["torch"]))
    if runtime.is_cuda and ("cuda" + suffix in rng or "cuda" in rng):
        torch.cuda.set_rng_state(rng.get(f"cuda{suffix}", rng.get("cuda")), job.device)
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
    """Digest of the encoded pairs: ids, token ids and labels of both sides, each pair's image and what the image
    inputs are made from (train.data.ImageStore.digest: image files, image processor settings)."""
    from silkfire.train.resume import tensors_digest

    return tensors_digest(data.ids, data.chosen_ids, data.chosen_labels, data.rejected_ids, data.rejected_labels,
                          list(data.image_index), data.pixel_values.digest())


# ---- training ----------------------------------------------------------------------------------------------------


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_dpo(
    start: str | Path,
    pairs_path: Path,
    image_root: Path,
    config: DPOConfig,
    out_dir: Path,
    callbacks: Sequence[Callback] = (),
    config_key: str = "silkie.dpo",
) -> DPOResult:
    """DPO from the model at ``start`` on the pairs of ``pairs_path`` (JSONL; images under ``image_root``).

    Writes ``out_dir/model`` (final model + processor; LoRA adapters merged), ``out_dir/adapter`` (LoRA only),
    ``out_dir/checkpoints/checkpoint-<step>``, ``out_dir/reference_logps.safetensors`` (the reference pass,
    reused on resume), ``out_dir/history.csv`` and ``out_dir/metrics.json``. It continues from the newest checkpoint
    when that carries this run's fingerprint (``config.resume``: auto | true | false, see
    :mod:`silkfire.train.resume`); the decision is printed, set as tags of the active MLflow run and returned in
    the metrics (``resumed_from_step``, ``steps_run``). Callbacks follow silkfire.train.callbacks (SFT's too):
    ``callback(event, step, values)`` with event ``"log"`` (values: the logged row), ``"step"`` (after every
    optimizer step) or ``"save"`` (a checkpoint written); raise :class:`TrainingStopped` to stop, as a kill would.
    Under ``accelerate launch`` every process calls them (see the module docstring); only process 0 writes files. A CUDA out-of-memory error names
    ``<config_key>.batch_size`` / ``ref_batch_size``.
    """
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import get_scheduler

    from silkfire import runtime as runtime_policy
    from silkfire.io import file_digest
    from silkfire.models.loading import load_vlm
    from silkfire.train import resume
    from silkfire.train.sft import freeze_parts

    runtime = runtime_policy.resolve(config.device, config.dtype, config.gradient_checkpointing)
    runtime.check_training(f"train_dpo ({config_key})")
    job = _Job.from_env(runtime)
    progress = config.progress and job.main
    torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    out_dir = Path(out_dir)
    checkpoints = out_dir / "checkpoints"
    what = f"train_dpo {out_dir}"

    # float32 master weights (DeepSpeed's bf16 engine keeps its own fp32 copy), on this process's device
    model, processor = load_vlm(start, dtype="float32", device=str(job.device))
    pad_id = processor.tokenizer.pad_token_id
    pairs = read_records(pairs_path)
    started = time.perf_counter()
    from silkfire.models.families import context_length

    # null: as long as the model reads (its context length), whatever its family's image token count
    max_length = config.max_length if config.max_length is not None else context_length(model)
    data, kept = encode_pairs(pairs, processor, image_root, max_length=max_length,
                              progress=progress, source=str(pairs_path))
    encode_seconds = time.perf_counter() - started
    mdpo = config.loss == "mdpo"
    if mdpo:
        data.corruptor = ImageCorruptor(processor, Path(image_root), config.mdpo_keep)
    if len(data) == 0:
        raise ValueError(f"{pairs_path}: every pair is longer than dpo.max_length={max_length} tokens"
                         f"{'' if config.max_length is not None else ' (the model context length)'}")

    # Continue this run's own checkpoints, or start over: a new run never mixes with an old run's outputs (the
    # reference pass is kept: it is keyed by its own inputs below). Process 0 decides and acts first.
    current = resume.fingerprint({**asdict(config), "dtype": runtime.dtype},
                                 {"pairs": pairs_digest(data), "start_model": resume.model_digest(start)})
    decision = None
    if job.main:
        decision = resume.decide(checkpoints, current, config.resume, checkpoint_dirs(checkpoints))
        stale = [path for path in out_dir.iterdir() if path.name not in ("checkpoints", REFERENCE_FILE)] \
            if out_dir.is_dir() else []
        resume.prepare(checkpoints, decision, current, clear=stale)
    job.barrier()
    if not job.main:
        decision = resume.decide(checkpoints, current, config.resume, checkpoint_dirs(checkpoints))
    assert decision is not None
    if len(set(job.gather_objects(decision.step))) != 1:
        raise RuntimeError(f"{what}: the processes disagree on the checkpoint to resume from (shared disk?)")
    if job.main:
        resume.record(decision, f"train_dpo {out_dir}")

    # The reference pass: once, before any adapter or update; reused when the pairs and start model are the same.
    # Sharded: process k runs batches k, k+N, ...; the sums give every pair's log-probs to every process.
    key = _digest(file_digest(pairs_path), str(start), _model_digest(start), max_length, runtime.dtype,
                  *(["shared_prefix"] if config.shared_prefix else []),  # equal up to rounding; timed apart
                  *([f"mdpo/{config.mdpo_keep}"] if mdpo else []))
    reference_path = out_dir / REFERENCE_FILE
    started = time.perf_counter()
    cached = load_file(str(reference_path)) if reference_path.is_file() else {}
    if cached.get("key") is not None and bytes(cached["key"].tolist()).decode() == key:
        data.ref_chosen, data.ref_rejected = cached["chosen"], cached["rejected"]
        data.ref_corrupt = cached.get("corrupt")
    else:
        with runtime_policy.oom_hint(f"{what} (reference pass)", {f"{config_key}.ref_batch_size":
                                     config.ref_batch_size}, runtime=runtime):
            passes = reference_logps(model, data, pad_id, config.ref_batch_size, progress,
                                     runtime=runtime, shard=(job.rank, job.world),
                                     shared_prefix=config.shared_prefix, corrupt=mdpo)
        summed = job.sum(torch.stack(list(passes)))
        data.ref_chosen, data.ref_rejected = summed[0].contiguous(), summed[1].contiguous()
        data.ref_corrupt = summed[2].contiguous() if mdpo else None
        if job.main:
            save_file({"chosen": data.ref_chosen, "rejected": data.ref_rejected,
                       **({"corrupt": data.ref_corrupt} if mdpo else {}),
                       "key": torch.tensor(list(key.encode()), dtype=torch.uint8)}, str(reference_path))
    reference_seconds = time.perf_counter() - started

    dropped = len(pairs) - len(kept)
    train_idx, eval_idx = split_pairs([pairs[i] for i in kept], config.eval_fraction, config.seed)
    train_data, eval_data = data.subset(train_idx), data.subset(eval_idx)
    answer_tokens = _answer_tokens(train_data)

    frozen = freeze_parts(model, config.freeze)
    if runtime.gradient_checkpointing:
        runtime_policy.enable_gradient_checkpointing(model)
    if config.lora is not None:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        model, _ = apply_lora(model, config.lora)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable_count = sum(p.numel() for p in trainable)
    # fused: one kernel over all parameters instead of a loop of small ops (most of a tiny model's step on CPU)
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, betas=(0.9, config.adam_beta2),
                                  weight_decay=config.weight_decay, fused=True)
    pairs_per_step = config.batch_size * config.grad_accum * job.world
    steps_per_epoch = math.ceil(len(train_data) / pairs_per_step)
    total_steps = config.max_steps if config.max_steps > 0 else math.ceil(config.num_epochs * steps_per_epoch)
    scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=math.ceil(config.warmup_ratio *
                              total_steps), num_training_steps=total_steps)

    history: list[dict[str, Any]] = []
    window: dict[str, float] = {}
    window_steps = 0
    first_step = 0
    if decision.checkpoint is not None and not job.sharded:
        state = _load_checkpoint(decision.checkpoint, model, optimizer, scheduler, job, runtime)
    model, optimizer = job.prepare(model, optimizer, config)
    if decision.checkpoint is not None and job.sharded:
        state = _load_checkpoint(decision.checkpoint, model, optimizer, scheduler, job, runtime)
    if decision.checkpoint is not None:
        first_step, history, window, window_steps = (int(state["step"]), state["history"], state["window"],
                                                     int(state["window_steps"]))

    def emit(event: str, step: int, values: dict[str, Any]) -> None:
        for callback in callbacks:
            callback(event, step, values)

    from tqdm.auto import tqdm

    knobs = {f"{config_key}.batch_size": config.batch_size}
    advice = [f"raise {config_key}.grad_accum to keep the global batch"]
    if config.eval_fraction > 0:
        advice.append(f"lower {config_key}.ref_batch_size (now {config.ref_batch_size}; the eval batches)")
    if runtime.is_cuda:
        torch.cuda.reset_peak_memory_stats(job.device)
    started = time.perf_counter()
    order: list[int] = []
    order_epoch = -1
    bar = tqdm(total=total_steps, initial=first_step, desc="dpo", unit="step", disable=not progress)
    with runtime_policy.oom_hint(what, knobs, training=True, runtime=runtime, advice=advice):
        for step in range(first_step, total_steps):
            epoch, within = divmod(step, steps_per_epoch)
            if epoch != order_epoch:  # the order of an epoch depends on (seed, epoch) only: resume-exact
                order = epoch_order(train_data, config.seed, epoch, pairs_per_step, config.group_by_length)
                order_epoch = epoch
            chunk = order[within * pairs_per_step:(within + 1) * pairs_per_step]
            micros = _micro_slices(chunk, config, job.world, job.rank)
            if job.world == 1:  # one process skips empty micro-batches; N processes run each (DDP syncs on the last)
                micros = [(whole, mine) for whole, mine in micros if mine]
            sums = torch.zeros((len(micros), len(STEP_SUMS)), dtype=torch.float64)
            micro_pairs = [len(whole) for whole, _ in micros]
            micro_tokens = [sum(answer_tokens[i] for i in whole) for whole, _ in micros]
            for index, (whole, mine) in enumerate(micros):
                # a process with no pair in this micro-batch (the end of an epoch) still runs one, weighted 0, so
                # that every process takes part in the gradient all-reduce
                scale = 1.0 if mine else 0.0
                with job.no_sync(model, last=index == len(micros) - 1):
                    loss, local = _micro_terms(model, train_data, mine or (chunk[:1]), pad_id, config, runtime,
                                               len(whole), micro_tokens[index], len(chunk))
                    job.backward(loss * (scale * job.world))  # DDP / ZeRO / FSDP average the processes' gradients
                sums[index] = local * scale
            sums = job.sum(sums)
            grad_norm = job.clip(model, trainable, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step_metrics = _step_metrics(sums, micro_pairs, micro_tokens, len(chunk), config.rpo_alpha,
                                         image_terms=config.loss == "mdpo")
            step_metrics["grad_norm"] = grad_norm
            for name in WINDOW_KEYS + (("image_reward_accuracy",) if config.loss == "mdpo" else ()):
                window[name] = window.get(name, 0.0) + step_metrics[name]
            window_steps += 1
            done = step + 1
            bar.update(1)
            evaluate_now = len(eval_data) > 0 and (
                done == total_steps or (config.eval_steps > 0 and done % config.eval_steps == 0))
            if done % config.logging_steps == 0 or done == total_steps or done == 1 or evaluate_now:
                row = {"step": done, "epoch": round(done / steps_per_epoch, 4),
                       "learning_rate": float(scheduler.get_last_lr()[0]),
                       **{name: value / window_steps for name, value in window.items()}}
                if evaluate_now:  # the held-out curve (an eval pass does not touch the training RNG)
                    row.update(evaluate_pairs(model, eval_data, pad_id, config, runtime))
                history.append(row)
                window, window_steps = {}, 0
                emit("log", done, row)
            if config.save_steps and done % config.save_steps == 0 and done < total_steps:
                _save_checkpoint(checkpoints / f"checkpoint-{done}", model, optimizer, scheduler,
                                 {"step": done, "history": history, "window": window, "window_steps": window_steps,
                                  "config": asdict(config)}, job, runtime)
                if job.main:
                    for old in checkpoint_dirs(checkpoints)[:-config.save_total_limit or None]:
                        shutil.rmtree(old)
                emit("save", done, {"checkpoint": str(checkpoints / f"checkpoint-{done}")})
            emit("step", done, step_metrics)
    bar.close()
    train_seconds = time.perf_counter() - started
    peak_memory = runtime_policy.peak_memory_bytes(runtime) if job.world == 1 else None

    model_dir = out_dir / "model"
    _save_final(model, processor, start, out_dir, model_dir, config, job)
    steps_run = total_steps - first_step
    last = history[-1] if history else {}
    metrics: dict[str, Any] = {
        **{key: float(last[key]) for key in HISTORY_FIELDS if key not in ("step", "epoch") and key in last},
        "pairs_per_second": steps_run * pairs_per_step / train_seconds if train_seconds > 0 and steps_run else math.nan,
        "train_seconds": train_seconds, "reference_seconds": reference_seconds, "encode_seconds": encode_seconds,
        "global_step": total_steps, "train_pairs": len(train_data), "eval_pairs": len(eval_data),
        "dropped_long_pairs": dropped, "trainable_parameters": trainable_count,
        "frozen_parameters": frozen, "resumed_from_step": first_step, "steps_run": steps_run,
        "num_processes": job.world, "global_batch_size": pairs_per_step,
        "device": runtime.device if job.world == 1 else f"{job.kind} x {job.world} ({job.device.type})",
        "dtype": runtime.dtype,
    }
    if peak_memory is not None:
        metrics["peak_memory_bytes"] = peak_memory
    if job.main:
        write_history_csv_fields(out_dir / "history.csv", history)
        write_json(out_dir / "metrics.json", metrics)
    job.barrier()
    return DPOResult(model_dir=model_dir, metrics=metrics, history=history)


def _save_final(model: Any, processor: Any, start: str | Path, out_dir: Path, model_dir: Path, config: DPOConfig,
                job: _Job) -> None:
    """The trained model as a plain HF folder in the start checkpoint's dtype (LoRA merged; adapters kept)."""
    import torch

    from silkfire.models.loading import checkpoint_dtype
    from silkfire.train.lora import merge_lora

    saved_dtype = getattr(torch, checkpoint_dtype(start) or "float32")
    state = job.accelerator.get_state_dict(model) if job.sharded else None  # collective: every process
    if job.main:
        model = job.unwrap(model)
        if config.lora is not None:
            # adapter weights (safetensors) + adapter_config.json
            model.save_pretrained(str(out_dir / "adapter"), **({"state_dict": state} if state is not None else {}))
            if state is not None:  # the shards' weights are not in this process's modules: merge from the files
                from peft import PeftModel

                from silkfire.models.loading import load_vlm

                base, _ = load_vlm(start, dtype="float32", device="cpu")
                model = PeftModel.from_pretrained(base, str(out_dir / "adapter"))
                state = None
            model = merge_lora(model)
        if state is not None:
            model.save_pretrained(str(model_dir), state_dict={k: v.to(saved_dtype) if v.is_floating_point() else v
                                                               for k, v in state.items()})
        else:
            model.to(saved_dtype).save_pretrained(str(model_dir))
        processor.save_pretrained(str(model_dir))
    job.barrier()


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
