"""Cost of the pipeline at the papers' scale, on paper: hours, GPU memory and API dollars per stage (issue 16 item 7).

    .venv/bin/python benchmarks/cost_model.py [--gpus 8] [--judge-in-usd-per-m 2.5] [--judge-out-usd-per-m 10]
        [--set response_tokens=200 --set mfu_train_low=0.3 ...] [--no-json]

Nothing here is measured on a GPU (this machine has none). Every figure is FLOPs or bytes counted from first
principles, divided by a stated hardware peak times a stated efficiency range:

* training: per token, forward = 2 x (matmul parameters) + attention scores; backward = 2 x forward for layers that
  train (input and weight gradients), 1 x forward for frozen layers the gradient must cross (input gradients only:
  LoRA's frozen base), 0 for the frozen vision tower (it runs forward only); gradient checkpointing adds one more
  forward of the decoder. DPO = the policy's forward + backward on chosen and rejected (two rows per pair, as
  `silkie.dpo.shared_prefix: false`; the default `true` runs the shared prompt once, so this is the upper bound)
  every epoch + the reference model's forward once per pair (the
  repo computes the reference log-probs in one pass before training, sharded over the processes).
* sampling (vLLM endpoints): prefill is compute-bound (2 x N x prompt tokens incl. the 576 image tokens + the
  vision tower); decode is memory-bandwidth-bound: every step reads the weights once for a whole batch plus each
  sequence's KV cache, the batch being as large as the KV cache left in HBM allows.
* judging: tokens of the judge template (src/silkfire/vlfeedback/template.py, rendered here) + the instruction + the
  4 responses + the image in; 3 aspects x 4 texts of Rating/Rationale out; $ at the prices given.
* memory: weights + gradients + AdamW states + fp32 master weights, sharded as DDP / ZeRO-2 / ZeRO-3 / FSDP do over
  the GPUs, + saved activations of one micro-batch at the stage's maximum length, with and without checkpointing.

Every input is read from a file (conf/, src/, the published references; each printed with its source) or is a named
assumption (printed under "Assumptions", each overridable with ``--set name=value``). The cross-check against the
repo's own measurement: the same FLOP accounting applied to the tiny model of benchmarks/dpo_vs_trl.py, against
torch's flop counter in that benchmark's committed raw JSON (and the CPU MFU it measured, which says nothing
about GPU speed). Prints Markdown; writes the raw figures to ``benchmarks/results/cost_model-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
REFERENCES = Path("/work/shared/reference")
GIB = 1024 ** 3
CONFIG_ORDER = ("deepspeed_zero2", "fsdp", "deepspeed_zero3")  # least communication first


# ---- named assumptions ------------------------------------------------------------------------------------------
@dataclass
class Assumptions:
    """Every number not read from a file. Printed with its reason; ``--set name=value`` overrides one."""

    peak_bf16_tflops: float = 989.0          # H100 SXM5 dense bf16, NVIDIA H100 datasheet (1979 is with sparsity)
    hbm_gb: float = 80.0                     # H100 SXM5 80 GB HBM3
    hbm_tb_s: float = 3.35                   # H100 SXM5 HBM3 bandwidth, NVIDIA datasheet
    a100_peak_bf16_tflops: float = 312.0     # A100 dense bf16, datasheet: only for the FIRE calibration line
    mfu_train_low: float = 0.35              # SFT/DPO MFU under ZeRO/FSDP on H100, pessimistic end (7B fine-tuning)
    mfu_train_high: float = 0.45             # SFT/DPO MFU, optimistic end; neither end measured here (no GPU)
    mfu_prefill_low: float = 0.40            # vLLM prefill MFU of 600-800-token prompts (compute-bound), low end
    mfu_prefill_high: float = 0.60           # vLLM prefill MFU, high end
    bw_eff_low: float = 0.60                 # share of HBM bandwidth a decode step achieves (weights + KV), low end
    bw_eff_high: float = 0.80                # same, high end
    usable_hbm_share: float = 0.90           # vLLM gpu_memory_utilization default; also the training headroom
    vllm_max_num_seqs: int = 256             # vLLM's default cap on sequences decoded together
    vllm_reserve_gib: float = 4.0            # vLLM activations / CUDA graphs / fragmentation beside weights + KV
    tokens_per_word: float = 1.3             # Llama SentencePiece on English prose (FIRE publishes words, not tokens)
    chars_per_token_api: float = 4.0         # OpenAI's rule of thumb for GPT-4-class BPE on English
    template_tokens_per_turn: int = 8        # llava-hf chat template: "USER: ... ASSISTANT:" + </s> per turn
    vlf_prompt_tokens: int = 60              # VLFeedback instruction length: the card gives no mean
    response_tokens: int = 150               # VLFeedback mean completion: not published (GPT-4V ~200+, InstructBLIP
                                             #   and Fuyu far less); max_new_tokens caps it; time and $ scale with it
    api_image_tokens: int = 255              # GPT-4o/4V high detail, one 512-px tile: 85 + 170 (OpenAI pricing page)
    rationale_tokens: int = 40               # judge rationale per (aspect, text): one or two sentences, as VLFeedback's
    api_output_tokens_per_s: float = 60.0    # judge reply speed (with the first-token delay: a call's latency)
    api_first_token_s: float = 1.0           # judge time to first token
    judge_tpm: float = 2_000_000             # tokens-per-minute limit of the judge account: set your own
    fire_question_tokens: int = 20           # FIRE question length (VQA-style); FIRE publishes answer lengths only
    fire_groundtruth_tokens: int = 5         # FIRE groundtruth length (short VQA answers)
    fire_1m_mean_rounds: float = 2.5         # FIRE-1M has only 2- and 3-round dialogues; the split is not published
    llava_next_image_tokens: int = 2340      # LLaVA-NeXT anyres, 4:3 image: 576 base + 2x2 tiles unpadded to 48x36 +
                                             #   36 newlines (576 without tiles, ~2930 at most): calibration only
    sft_micro_batch: int = 4                 # full SFT rows per GPU (docs/scaling.md's ZeRO-2 command: 4 x accum 4)
    sft_grad_accum: int = 4                  # full SFT accumulation (global batch = GPUs x micro x accum)
    activation_bytes_fudge: float = 1.0      # multiplies the derived activation bytes (allocator slack: raise it)
    max_loss_minutes: float = 15.0           # wall minutes of work a lost node may cost (the checkpoint cadence)
    ckpt_write_gb_s: float = 2.0             # aggregate write speed of the checkpoint filesystem

    def doc(self) -> dict[str, str]:
        """name -> the comment after its default in this file (the reason printed under Assumptions)."""
        text = Path(__file__).read_text(encoding="utf-8")
        block = text[text.index("class Assumptions"):text.index("def doc(self)")]
        reasons: dict[str, str] = {}
        last = None
        for line in block.splitlines():
            match = re.match(r"\s+(\w+): \w+ = [^#]*#\s*(.*)", line)
            if match:
                last = match.group(1)
                reasons[last] = match.group(2).strip()
            elif last and re.match(r"\s+#\s+", line):
                reasons[last] += " " + line.strip().lstrip("#").strip()
        return reasons


# ---- architectures --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tower:
    """A transformer stack: what FLOPs and bytes need (biases and norms are not matmuls and are left out)."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    gated_mlp: bool          # Llama SwiGLU (gate, up, down) vs CLIP fc1/fc2
    vocab: int = 0           # lm_head rows (0: no head)

    @property
    def kv_hidden(self) -> int:
        return self.hidden * self.kv_heads // self.heads

    def layer_matmul_params(self) -> int:
        attention = 2 * self.hidden * self.hidden + 2 * self.hidden * self.kv_hidden   # q, o + k, v
        return attention + (3 if self.gated_mlp else 2) * self.hidden * self.ffn

    def matmul_params(self) -> int:
        """Parameters that a token multiplies through (the input embedding is a lookup, the head a matmul)."""
        return self.layers * self.layer_matmul_params() + self.vocab * self.hidden

    def attention_flops(self, positions: float) -> float:
        """Forward QK^T and AV of one sequence: 2 x 2 x T^2 x hidden per layer. Counted full although causal
        kernels skip about half: a slight overestimate of the work."""
        return 4 * self.layers * positions ** 2 * self.hidden


@dataclass(frozen=True)
class VLM:
    name: str
    source: str              # where the shapes come from
    vision: Tower
    vision_positions: int    # patches + CLS
    patch_params: int        # the patch-embedding convolution
    image_tokens: int        # tokens the LLM sees per image
    projector_params: int
    llm: Tower
    context: int
    embedding_params: int    # input embedding (stored, trained in full fine-tuning, no FLOPs)

    def params(self) -> dict[str, int]:
        vision = self.vision.matmul_params() + self.patch_params
        return {"vision": vision, "projector": self.projector_params,
                "llm": self.llm.matmul_params() + self.embedding_params}

    def vision_forward_flops(self) -> float:
        """One image through the tower (all layers run, whatever feature layer the projector reads)."""
        return (2 * self.vision.matmul_params() * self.vision_positions + 2 * self.patch_params * self.image_tokens
                + self.vision.attention_flops(self.vision_positions))


def clip_l336_llava(name: str, source: str, llm: Tower, context: int, image_tokens: int | None = None) -> VLM:
    """CLIP ViT-L/14 at 336 px (24 layers, 1024 wide; 24^2 = 576 patches + CLS) + LLaVA's 2-layer GELU projector."""
    vision = Tower(layers=24, hidden=1024, ffn=4096, heads=16, kv_heads=16, gated_mlp=False)
    patches = (336 // 14) ** 2
    return VLM(name=name, source=source, vision=vision, vision_positions=patches + 1,
               patch_params=3 * 14 * 14 * 1024, image_tokens=image_tokens or patches,
               projector_params=1024 * llm.hidden + llm.hidden * llm.hidden, llm=llm, context=context,
               embedding_params=llm.vocab * llm.hidden)


def model_catalogue(repo: "Repo") -> dict[str, VLM]:
    """The shapes of the checkpoints conf/model names (their hub config.json, not reachable offline: copied here,
    named, and checked against the published parameter counts in the test)."""
    llava7 = repo.yaml("conf/model/llava_1_5_7b.yaml")["name_or_path"]
    next8 = repo.yaml("conf/model/llava_next_8b.yaml")["name_or_path"]
    vicuna7b = Tower(layers=32, hidden=4096, ffn=11008, heads=32, kv_heads=32, gated_mlp=True, vocab=32064)
    llama3_8b = Tower(layers=32, hidden=4096, ffn=14336, heads=32, kv_heads=8, gated_mlp=True, vocab=128320)
    return {
        "llava_1_5_7b": clip_l336_llava(llava7, f"conf/model/llava_1_5_7b.yaml -> {llava7} config.json "
                                        "(CLIP ViT-L/14-336, Vicuna-7B: 32 x 4096, MLP 11008, vocab 32064, "
                                        "context 4096)", vicuna7b, context=4096),
        "llava_next_8b": clip_l336_llava(next8, f"conf/model/llava_next_8b.yaml -> {next8} config.json "
                                         "(CLIP ViT-L/14-336 anyres, Llama-3-8B: 32 x 4096, MLP 14336, GQA 32/8, "
                                         "vocab 128320, context 8192)", llama3_8b, context=8192,
                                         image_tokens=None),
    }


# ---- FLOP accounting ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Training:
    """What trains: ``full`` (projector + LLM, vision tower frozen: the repo's `freeze: [vision_tower]`) or
    ``lora`` (adapters of ``lora_params`` in the LLM; ``projector_trains`` for FIRE's modules_to_save)."""

    mode: str
    lora_params: int = 0
    projector_trains: bool = False
    checkpointing: bool = False


def lora_params(llm: Tower, r: int, targets: tuple[str, ...]) -> int:
    """r x (in + out) per adapted matrix per layer."""
    shapes = {"q_proj": (llm.hidden, llm.hidden), "k_proj": (llm.hidden, llm.kv_hidden),
              "v_proj": (llm.hidden, llm.kv_hidden), "o_proj": (llm.hidden, llm.hidden),
              "gate_proj": (llm.hidden, llm.ffn), "up_proj": (llm.hidden, llm.ffn), "down_proj": (llm.ffn, llm.hidden)}
    return llm.layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)


def row_flops(model: VLM, positions: float, images: int, training: Training | None) -> dict[str, float]:
    """FLOPs of one sequence of ``positions`` LLM positions (image tokens included) holding ``images`` images;
    forward only when ``training`` is None (inference, the reference pass)."""
    vision = images * model.vision_forward_flops()
    projector = images * 2 * model.projector_params * model.image_tokens
    linear = 2 * model.llm.matmul_params() * positions
    attention = model.llm.attention_flops(positions)
    lora = 2 * (training.lora_params if training else 0) * positions
    forward = vision + projector + linear + attention + lora
    if training is None:
        return {"forward": forward, "backward": 0.0, "recompute": 0.0, "total": forward}
    if training.mode == "full":
        # weights and inputs of every LLM matmul; the projector too (its input gradient is not needed: the
        # tower is frozen, so 2x its forward is a small overcount)
        backward = 2 * (linear + attention + projector)
    else:
        # the frozen base passes input gradients only (1x), attention backward is 2x, adapters both (2x)
        backward = linear + 2 * attention + 2 * lora + (2 * projector if training.projector_trains else 0.0)
    recompute = (linear + attention + lora) if training.checkpointing else 0.0
    return {"forward": forward, "backward": backward, "recompute": recompute,
            "total": forward + backward + recompute}


def seconds(flops: float, gpus: int, peak_tflops: float, mfu: float) -> float:
    return flops / (gpus * peak_tflops * 1e12 * mfu)


# ---- memory ---------------------------------------------------------------------------------------------------
def activation_bytes_per_token(llm: Tower, training: Training, fudge: float) -> dict[str, float]:
    """Saved-for-backward bytes per position of one decoder layer in bf16, from the HF Llama layer: norm in/out
    twice, q, k, v, attention output (6h + 2 kv_h elements), gate, up, act(gate), act*up (4 ffn); the RMSNorms
    keep two fp32 copies of their input (2 x 2 x 4h bytes). LoRA's dropout keeps a masked copy of each adapted
    matrix's input (+1 byte mask). With checkpointing only the layer's input (2h bytes) stays."""
    h, kv, f = llm.hidden, llm.kv_hidden, llm.ffn
    full = 2 * (6 * h + 2 * kv + 4 * f) + 16 * h
    if training.mode == "lora" and training.lora_params:
        full += 3 * (6 * h + f)   # q, k, v, o, gate, up inputs (h) + down's input (f), bf16 + mask
    return {"no_checkpointing": full * fudge, "checkpointing": 2 * h * fudge, "one_layer_recompute": full * fudge}


def memory_per_gpu(model: VLM, training: Training, micro_rows: int, max_positions: int, gpus: int,
                   a: Assumptions) -> dict[str, dict[str, float]]:
    """GiB per GPU for each accelerate/*.yaml config (and DDP), with and without gradient checkpointing."""
    params = model.params()
    total = sum(params.values())
    if training.mode == "full":
        trainable = params["projector"] + params["llm"]
    else:
        trainable = training.lora_params + (params["projector"] if training.projector_trains else 0)
    frozen = total - trainable
    # bytes per parameter: DeepSpeed bf16 = bf16 weights (2) + bf16 grads (2) + fp32 master (4) + Adam m, v (8);
    # FSDP2 / DDP through the repo's own path = fp32 weights (4, the repo loads float32) + fp32 grads (4) + Adam (8)
    layouts = {
        "ddp": {"weights": 4 * total, "grads": 4 * trainable, "optimizer": 8 * trainable, "shard_w": 1,
                "shard_g": 1, "shard_o": 1},
        "deepspeed_zero2": {"weights": 2 * total, "grads": 2 * trainable, "optimizer": 12 * trainable,
                            "shard_w": 1, "shard_g": gpus, "shard_o": gpus},
        "deepspeed_zero3": {"weights": 2 * total, "grads": 2 * trainable, "optimizer": 12 * trainable,
                            "shard_w": gpus, "shard_g": gpus, "shard_o": gpus},
        "fsdp": {"weights": 4 * total, "grads": 4 * trainable, "optimizer": 8 * trainable, "shard_w": gpus,
                 "shard_g": gpus, "shard_o": gpus},
    }
    per_token = activation_bytes_per_token(model.llm, training, a.activation_bytes_fudge)
    positions = micro_rows * max_positions
    # logits: fp32 upcast + saved log-softmax (8 bytes) over the vocabulary, every position of the micro-batch
    logits = positions * model.llm.vocab * 8
    gathered_layer = 2 * 2 * model.llm.layer_matmul_params()   # ZeRO-3/FSDP: two bf16 layers in flight
    out: dict[str, dict[str, float]] = {}
    for name, lay in layouts.items():
        states = (lay["weights"] / lay["shard_w"] + lay["grads"] / lay["shard_g"] + lay["optimizer"] / lay["shard_o"]
                  + (gathered_layer if lay["shard_w"] > 1 else 0))
        for ckpt in (False, True):
            if ckpt:
                acts = (positions * model.llm.layers * per_token["checkpointing"]
                        + positions * per_token["one_layer_recompute"])
            else:
                acts = positions * model.llm.layers * per_token["no_checkpointing"]
            out.setdefault(name, {})["checkpointing" if ckpt else "no_checkpointing"] = (states + acts + logits) / GIB
        out[name]["states"] = states / GIB
    out["_"] = {"activations_no_ckpt": positions * model.llm.layers * per_token["no_checkpointing"] / GIB,
                "logits": logits / GIB, "trainable_params": trainable, "frozen_params": frozen}
    return out


def plan_memory(model: VLM, training: Training, micro_samples: int, rows_per_sample: int, max_positions: int,
                gpus: int, a: Assumptions) -> dict[str, Any]:
    """The cheapest set-up that fits: no checkpointing at the largest micro-batch <= the recipe's (the global
    batch kept by accumulation), least communication first (ZeRO-2, FSDP, ZeRO-3); else checkpointing (which
    costs one more decoder forward, counted in the time) at the recipe's micro-batch."""
    limit = a.hbm_gb * 1e9 / GIB * a.usable_hbm_share
    micro = micro_samples
    while micro >= 1:
        memory = memory_per_gpu(model, training, micro * rows_per_sample, max_positions, gpus, a)
        for name in CONFIG_ORDER:
            if memory[name]["no_checkpointing"] <= limit:
                return {"config": f"accelerate/{name}.yaml", "micro": micro, "checkpointing": False,
                        "gib": memory[name]["no_checkpointing"]}
        micro //= 2
    memory = memory_per_gpu(model, training, micro_samples * rows_per_sample, max_positions, gpus, a)
    for name in CONFIG_ORDER:
        if memory[name]["checkpointing"] <= limit:
            return {"config": f"accelerate/{name}.yaml", "micro": micro_samples, "checkpointing": True,
                    "gib": memory[name]["checkpointing"]}
    return {"config": "none fits", "micro": micro_samples, "checkpointing": True, "gib": float("nan")}


# ---- reading the repo and the references ------------------------------------------------------------------------
class Repo:
    """Reads conf/ and the references, remembering where every value came from."""

    def __init__(self, root: Path, references: Path) -> None:
        self.root, self.references = root, references
        self.sources: dict[str, str] = {}

    def yaml(self, rel: str) -> dict[str, Any]:
        import yaml

        return yaml.safe_load((self.root / rel).read_text(encoding="utf-8"))

    def conf(self, name: str, rel: str, *keys: str) -> Any:
        value: Any = self.yaml(rel)
        for key in keys:
            value = value[key]
        self.sources[name] = f"{rel}: {'.'.join(keys)} = {value}"
        return value

    def published(self, name: str, file: str, pattern: str, fallback: Any, cast: Any = float) -> Any:
        """A published figure read from reference/<file> by ``pattern`` (group 1); without the references (a
        fresh clone), the value copied from them, said so."""
        path = self.references / file
        if path.is_file():
            match = re.search(pattern, path.read_text(encoding="utf-8"))
            if not match:
                raise SystemExit(f"cost_model: {path} no longer says /{pattern}/: update the pattern")
            value = cast(match.group(1).replace(",", ""))
            self.sources[name] = f"reference/{file}: '{match.group(0)}'"
            return value
        self.sources[name] = f"reference/{file} (not found here; value copied from it)"
        return fallback


@dataclass(frozen=True)
class Published:
    vlf_prompts: int
    vlf_pairs: int
    dpo_epochs: int
    fire100k: int
    fire100k_rounds: dict[int, int]
    fire1m: int
    words_100k: tuple[float, float]
    words_1m: tuple[float, float]
    fire_hours_per_1m_a100x8: float


def read_published(repo: Repo) -> Published:
    v, f = "vlfeedback-mme-mmhal.md", "fire.md"
    rounds_text = repo.published("fire100k_rounds", f, r"FIRE-100K [\d,]+ \(rounds ([^)]*)\)",
                                 "2:49985 3:48925 4:5683 5:295 6:53", cast=str)
    w = repo.published("words", f, r"Avg words student/teacher: (100K [\d.]+/[\d.]+; 1M [\d.]+/[\d.]+)",
                       "100K 41.2/41.7; 1M 79.3/54.9", cast=str)
    words = [tuple(float(x) for x in part.split()[1].split("/")) for part in w.split(";")]
    return Published(
        vlf_prompts=repo.published("vlf_prompts", v, r"([\d,]+) rows, train split", 80258, int),
        vlf_pairs=repo.published("vlf_pairs", v, r"~(\d+)K comparison pairs", 380, int) * 1000,
        dpo_epochs=repo.published("dpo_epochs", v, r"beta [\d.]+, (\d+) epochs", 3, int),
        fire100k=repo.published("fire100k", f, r"FIRE-100K ([\d,]+) \(rounds", 104941, int),
        fire100k_rounds={int(k): int(n) for k, n in (item.split(":") for item in rounds_text.split())},
        fire1m=repo.published("fire1m", f, r"FIRE-1M ([\d,]+);", 1003490, int),
        words_100k=words[0], words_1m=words[1],  # type: ignore[arg-type]
        fire_hours_per_1m_a100x8=repo.published("fire_hours", f, r"(\d+) h on 8xA100 per 1M", 16.0),
    )


# ---- the stages ---------------------------------------------------------------------------------------------
def fire_lengths(words: tuple[float, float], rounds: float, a: Assumptions, image_tokens: int,
                 teacher_instruction_tokens: float) -> dict[str, float]:
    """LLM positions of one FIRE student sample (the whole dialogue: question, every student turn, the feedback
    turns between them) and of one teacher sample (one per teacher turn: question + groundtruth + FIRE's
    instruction + the student's response -> score and feedback), as silkfire.fire.sft_data builds them."""
    student, teacher = (w * a.tokens_per_word for w in words)
    turns = rounds
    student_sample = (image_tokens + a.fire_question_tokens + turns * student + (turns - 1) * teacher
                      + turns * a.template_tokens_per_turn)
    teacher_sample = (image_tokens + a.fire_question_tokens + a.fire_groundtruth_tokens + teacher_instruction_tokens
                      + student + teacher + a.template_tokens_per_turn)
    return {"student": student_sample, "teacher": teacher_sample, "teacher_samples_per_dialogue": rounds}


def judge_tokens(a: Assumptions, responses: int) -> dict[str, float]:
    """Tokens of one judge call (one record: the instruction, its image and all its responses, rated at once)."""
    from silkfire.vlfeedback.template import ASPECT_ORDER, render_prompt

    skeleton = render_prompt("", [""] * responses)
    reply = "\n\n".join(f"#### {aspect} Assessment\n" + "\n".join(
        f"##### Output for Text {k}\nRating: 4\nRationale: " for k in range(1, responses + 1))
        for aspect in ASPECT_ORDER)
    prompt_in = (len(skeleton) / a.chars_per_token_api + a.vlf_prompt_tokens + responses * a.response_tokens
                 + a.api_image_tokens)
    reply_out = len(reply) / a.chars_per_token_api + len(ASPECT_ORDER) * responses * a.rationale_tokens
    return {"template_chars": len(skeleton), "in": prompt_in, "out": reply_out}


def decode_rate(model: VLM, context: float, final_length: float, a: Assumptions) -> dict[str, float]:
    """Tokens/s of one vLLM replica on one GPU: a step reads the bf16 weights once for the batch plus every
    sequence's KV cache (``context`` mean positions); the batch is what the KV cache left in HBM holds."""
    params = sum(model.params().values())
    weights = 2 * params
    kv_per_token = 2 * model.llm.layers * model.llm.kv_hidden * 2          # K and V, bf16
    free = a.hbm_gb * 1e9 * a.usable_hbm_share - weights - a.vllm_reserve_gib * GIB
    batch = max(1, min(a.vllm_max_num_seqs, int(free // (kv_per_token * final_length))))
    step_bytes = weights + batch * context * kv_per_token
    rates = {}
    for label, eff in (("low", a.bw_eff_low), ("high", a.bw_eff_high)):
        rates[label] = batch / (step_bytes / (a.hbm_tb_s * 1e12 * eff))
    compute_bound = a.peak_bf16_tflops * 1e12 * a.mfu_prefill_high / (2 * model.llm.matmul_params())
    return {"batch": batch, "kv_bytes_per_token": kv_per_token, "weights_bytes": weights,
            "step_bytes": step_bytes, "tokens_per_s_low": rates["low"], "tokens_per_s_high": rates["high"],
            "compute_bound_tokens_per_s": compute_bound}


@dataclass
class Row:
    stage: str
    data: str
    model: str
    flops: float
    hours_low: float = 0.0          # at the high efficiency
    hours_high: float = 0.0         # at the low efficiency
    hours_1gpu_low: float = 0.0
    hours_1gpu_high: float = 0.0
    memory_gib: float | None = None
    config: str = ""
    usd: float = 0.0
    steps: int = 0
    step_seconds_high: float = 0.0
    save_steps: int = 0
    notes: str = ""
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)


def training_row(stage: str, data: str, model: VLM, samples: float, epochs: float,
                 flops_per_sample: Callable[[Training], float], global_batch: int, training: Training,
                 micro_samples: int, rows_per_sample: int, max_positions: int, gpus: int, a: Assumptions,
                 peak: float, notes: str = "", extra_flops: float = 0.0, configured_save_steps: int | None = None
                 ) -> Row:
    """Hours (low-high), memory, steps and the checkpoint cadence of one training stage."""
    plan = plan_memory(model, training, micro_samples, rows_per_sample, max_positions, gpus, a)
    training = dataclasses.replace(training, checkpointing=plan["checkpointing"])
    per_sample = flops_per_sample(training)
    flops = samples * epochs * per_sample + extra_flops
    steps = math.ceil(samples * epochs / global_batch)
    step_high = seconds(global_batch * per_sample, gpus, peak, a.mfu_train_low)
    save_steps = max(1, int(a.max_loss_minutes * 60 // step_high))
    memory = memory_per_gpu(model, training, micro_samples * rows_per_sample, max_positions, gpus, a)
    ckpt_bytes = 16 * memory["_"]["trainable_params"]   # what trains: bf16/fp32 weights + fp32 master + Adam m, v
    write_s = ckpt_bytes / (a.ckpt_write_gb_s * 1e9)
    config = plan["config"] + (" + gradient_checkpointing" if plan["checkpointing"] else "")
    if plan["micro"] != micro_samples:
        config += f", micro-batch {plan['micro']} x accum (recipe: {micro_samples})"
    return Row(stage=stage, data=data, model=model.name, flops=flops,
               hours_low=seconds(flops, gpus, peak, a.mfu_train_high) / 3600,
               hours_high=seconds(flops, gpus, peak, a.mfu_train_low) / 3600,
               hours_1gpu_low=seconds(flops, 1, peak, a.mfu_train_high) / 3600,
               hours_1gpu_high=seconds(flops, 1, peak, a.mfu_train_low) / 3600,
               memory_gib=plan["gib"], config=config, steps=steps, step_seconds_high=step_high,
               save_steps=save_steps, notes=notes,
               detail={"memory_gib": memory, "plan": plan, "flops_per_sample": per_sample,
                       "global_batch": global_batch, "micro_rows": micro_samples * rows_per_sample,
                       "max_positions": max_positions, "checkpoint_bytes": ckpt_bytes,
                       "checkpoint_write_seconds": write_s,
                       "checkpoint_overhead_share": write_s / (save_steps * step_high),
                       "configured_save_steps": configured_save_steps,
                       "configured_save_minutes_high": (configured_save_steps * step_high / 60
                                                        if configured_save_steps else None)})


def build_rows(repo: Repo, pub: Published, a: Assumptions, gpus: int, prices: tuple[float, float]) -> list[Row]:
    models = model_catalogue(repo)
    llava = models["llava_1_5_7b"]
    peak = a.peak_bf16_tflops
    rows: list[Row] = []

    # -- SFT, full fine-tuning of LLaVA-1.5-7B (tower frozen) on FIRE's student dialogues
    from silkfire.fire.prompts import TEACHER_INSTRUCTION

    instruction = len(TEACHER_INSTRUCTION.split()) * a.tokens_per_word
    repo.sources["fire_teacher_instruction"] = (f"src/silkfire/fire/prompts.py: TEACHER_INSTRUCTION, "
                                                f"{len(TEACHER_INSTRUCTION.split())} words")
    rounds_100k = sum(k * n for k, n in pub.fire100k_rounds.items()) / sum(pub.fire100k_rounds.values())
    len_100k = fire_lengths(pub.words_100k, rounds_100k, a, llava.image_tokens, instruction)
    len_1m = fire_lengths(pub.words_1m, a.fire_1m_mean_rounds, a, llava.image_tokens, instruction)
    fire_max = repo.conf("fire_max_length", "conf/experiment/fire_llava_8b.yaml", "fire", "sft", "max_length")
    full = Training("full")
    for data, n, lengths in (("FIRE-100K student dialogues", pub.fire100k, len_100k),
                             ("FIRE-1M student dialogues", pub.fire1m, len_1m)):
        rows.append(training_row("SFT (full, tower frozen)", data, llava, n, 1.0,
                                 lambda t, p=lengths["student"]: row_flops(llava, p, 1, t)["total"],
                                 gpus * a.sft_micro_batch * a.sft_grad_accum, full, a.sft_micro_batch, 1, fire_max,
                                 gpus, a, peak, notes=f"{lengths['student']:.0f} positions/sample, 1 epoch"))

    # -- sampling: 80k prompts x 4 completions on vLLM endpoints (7B-class LLaVA-1.5 for every local member)
    responses = repo.conf("responses", "conf/experiment/silkie_7b.yaml", "silkie", "sample", "responses")
    max_new = repo.conf("max_new_tokens", "conf/experiment/silkie_7b.yaml", "silkie", "sample", "max_new_tokens")
    pool = {k: v for k, v in repo.conf("pool", "conf/experiment/silkie_7b.yaml", "silkie", "sample", "pool").items()
            if v}
    api_members = [k for k, v in pool.items() if "api.openai.com" in str(v.get("base_url", ""))]
    repo.sources["pool"] = (f"conf/experiment/silkie_7b.yaml: silkie.sample.pool, {len(pool)} members, "
                            f"{len(api_members)} on the OpenAI API ({', '.join(api_members)})")
    api_share = len(api_members) / len(pool)
    completions = pub.vlf_prompts * responses
    local = completions * (1 - api_share)
    prompt_positions = llava.image_tokens + a.vlf_prompt_tokens + a.template_tokens_per_turn
    prefill = row_flops(llava, prompt_positions, 1, None)["total"]
    decode = decode_rate(llava, prompt_positions + a.response_tokens / 2, prompt_positions + a.response_tokens, a)
    prefill_s = {k: local * prefill / (peak * 1e12 * m) for k, m in (("low", a.mfu_prefill_high),
                                                                    ("high", a.mfu_prefill_low))}
    decode_s = {k: local * a.response_tokens / decode[f"tokens_per_s_{k2}"] for k, k2 in (("low", "high"),
                                                                                         ("high", "low"))}
    api_usd = completions * api_share * ((prompt_positions - llava.image_tokens + a.api_image_tokens) * prices[0]
                                         + a.response_tokens * prices[1]) / 1e6
    gpu_s = {k: prefill_s[k] + decode_s[k] for k in ("low", "high")}
    rows.append(Row(stage="Sampling (vLLM, 1 replica/GPU)", data=f"{pub.vlf_prompts:,} prompts x {responses}",
                    model=f"{len(pool) - len(api_members)} local 7B-class + {', '.join(api_members)} (API)",
                    flops=local * prefill, hours_low=gpu_s["low"] / gpus / 3600,
                    hours_high=gpu_s["high"] / gpus / 3600, hours_1gpu_low=gpu_s["low"] / 3600,
                    hours_1gpu_high=gpu_s["high"] / 3600,
                    memory_gib=(a.hbm_gb * 1e9 * a.usable_hbm_share) / GIB, config="vLLM (weights + KV cache)",
                    usd=api_usd,
                    notes=(f"decode batch {decode['batch']}, {decode['tokens_per_s_low']:.0f}-"
                           f"{decode['tokens_per_s_high']:.0f} tok/s/GPU; prefill "
                           f"{sum(prefill_s.values()) / sum(gpu_s.values()):.0%} of GPU time; "
                           f"{a.response_tokens} tokens/response (cap {max_new}); API share {api_share:.0%}"),
                    detail={"prefill_flops_per_completion": prefill, "decode": decode, "prefill_gpu_s": prefill_s,
                            "decode_gpu_s": decode_s, "local_completions": local,
                            "api_completions": completions * api_share}))

    # -- judging: one call per prompt (its 4 responses at once), GPT-4V-class API
    concurrency = repo.conf("judge_concurrency", "conf/silkie/judge/api.yaml", "concurrency")
    tokens = judge_tokens(a, responses)
    calls = pub.vlf_prompts
    usd = calls * (tokens["in"] * prices[0] + tokens["out"] * prices[1]) / 1e6
    latency = a.api_first_token_s + tokens["out"] / a.api_output_tokens_per_s
    by_concurrency = calls * latency / concurrency / 3600
    by_tpm = calls * (tokens["in"] + tokens["out"]) / a.judge_tpm / 60
    rows.append(Row(stage="Judging (API, 1 call/prompt)", data=f"{calls:,} calls x {responses} responses",
                    model="GPT-4V-class API", flops=0.0, hours_low=by_tpm, hours_high=max(by_tpm, by_concurrency),
                    config=f"concurrency {concurrency} (conf) / {a.judge_tpm:,.0f} TPM", usd=usd,
                    notes=(f"low: the TPM limit, needs concurrency >= {math.ceil(latency * calls / (by_tpm * 3600))}; "
                           f"high: conf's concurrency {concurrency} at {latency:.0f} s/call; "
                           f"{tokens['in']:.0f} in + {tokens['out']:.0f} out tokens/call "
                           f"({tokens['in'] / responses:.0f} + {tokens['out'] / responses:.0f} per completion); "
                           f"${prices[0]}/{prices[1]} per 1M in/out"),
                    detail={"tokens_per_call": tokens, "calls": calls, "latency_s": latency,
                            "hours_at_conf_concurrency": by_concurrency, "hours_at_tpm": by_tpm}))

    # -- DPO at Silkie's recipe on the ~380K pairs of the 80k prompts
    dpo = repo.yaml("conf/experiment/silkie_7b.yaml")["silkie"]["dpo"]
    for key in ("num_epochs", "batch_size", "grad_accum", "max_length", "save_steps"):
        repo.sources[f"dpo_{key}"] = f"conf/experiment/silkie_7b.yaml: silkie.dpo.{key} = {dpo[key]}"
    repo.sources["dpo_lora"] = f"conf/experiment/silkie_7b.yaml: silkie.dpo.lora = {dpo['lora']}"
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # `auto` = all
    global_batch = dpo["batch_size"] * dpo["grad_accum"]     # 2 x 64 in one process = 8 GPUs x 2 x 8 (released)
    row_positions = prompt_positions + a.response_tokens
    pairs = pub.vlf_pairs
    for label, training in (("DPO (LoRA r64, Silkie)", Training("lora", lora_params(llava.llm, dpo["lora"]["r"],
                                                                                       targets))),
                            ("DPO (full, tower frozen)", Training("full"))):
        per_pair = 2 * row_flops(llava, row_positions, 1, training)["total"]
        reference = pairs * 2 * row_flops(llava, row_positions, 1, None)["total"]   # once, before training
        rows.append(training_row(label, f"{pairs:,} pairs x {dpo['num_epochs']} epochs", llava, pairs,
                                 dpo["num_epochs"], lambda t: 2 * row_flops(llava, row_positions, 1, t)["total"],
                                 global_batch, training, dpo["batch_size"], 2, dpo["max_length"], gpus, a, peak,
                                 extra_flops=reference, configured_save_steps=dpo["save_steps"],
                                 notes=f"2 rows x {row_positions:.0f} positions/pair; reference pass (once) "
                                       f"~{reference / (reference + pairs * dpo['num_epochs'] * per_pair):.0%} "
                                       "of FLOPs"))

    # -- FIRE student and teacher: LoRA r64 on q/k/v, projector trained (fire_llava_8b's recipe)
    fire = repo.yaml("conf/experiment/fire_llava_8b.yaml")["fire"]["sft"]["student"]
    repo.sources["fire_recipe"] = (f"conf/experiment/fire_llava_8b.yaml: fire.sft.student = batch "
                                   f"{fire['batch_size']} x accum {fire['grad_accum']}, {fire['num_epochs']} epoch, "
                                   f"LoRA r {fire['lora']['r']} on {fire['lora']['target_modules']}, "
                                   f"modules_to_save {fire['lora']['modules_to_save']}")
    fire_training = Training("lora", lora_params(llava.llm, fire["lora"]["r"], tuple(fire["lora"]["target_modules"])),
                             projector_trains=True)
    for role, n in (("student", pub.fire100k), ("teacher", pub.fire100k * len_100k["teacher_samples_per_dialogue"])):
        rows.append(training_row(f"FIRE {role} SFT (LoRA r{fire['lora']['r']} q/k/v)", f"FIRE-100K: {n:,.0f} samples",
                                 llava, n, fire["num_epochs"],
                                 lambda t, p=len_100k[role]: row_flops(llava, p, 1, t)["total"],
                                 gpus * fire["batch_size"] * fire["grad_accum"], fire_training, fire["batch_size"], 1,
                                 fire_max, gpus, a, peak, configured_save_steps=fire["save_steps"],
                                 notes=f"{len_100k[role]:.0f} positions/sample"))
    return rows


def fire_calibration(repo: Repo, pub: Published, a: Assumptions) -> dict[str, Any]:
    """FIRE's published '16 h on 8xA100 per 1M' against this accounting: the MFU it would take for FIRE-LLaVA
    (LLaVA-NeXT-8B, LoRA q/k/v + projector, gradient checkpointing) on FIRE-1M's student dialogues, with anyres
    image tokens and with a single 336-px view (576)."""
    from silkfire.fire.prompts import TEACHER_INSTRUCTION

    model = model_catalogue(repo)["llava_next_8b"]
    instruction = len(TEACHER_INSTRUCTION.split()) * a.tokens_per_word
    training = Training("lora", lora_params(model.llm, 64, ("q_proj", "k_proj", "v_proj")), projector_trains=True,
                        checkpointing=True)
    budget = pub.fire_hours_per_1m_a100x8 * 3600 * 8 * a.a100_peak_bf16_tflops * 1e12
    out: dict[str, Any] = {"model": model.name, "published_hours": pub.fire_hours_per_1m_a100x8, "variants": {}}
    for label, image_tokens, views in (("anyres", a.llava_next_image_tokens, 5), ("single view", 576, 1)):
        lengths = fire_lengths(pub.words_1m, a.fire_1m_mean_rounds, a, image_tokens, instruction)
        flops = pub.fire1m * row_flops(model, lengths["student"], views, training)["total"]
        out["variants"][label] = {"image_tokens": image_tokens, "positions_per_sample": lengths["student"],
                                  "flops": flops, "implied_mfu": flops / budget}
    return out


def cpu_crosscheck(repo: Repo) -> dict[str, Any] | None:
    """The same accounting on the tiny model of benchmarks/dpo_vs_trl.py against torch's flop counter in its
    newest committed raw JSON; the vocabulary is what its parameter count implies (tied embeddings)."""
    files = sorted((repo.root / "benchmarks" / "results").glob("dpo_vs_trl-*.json"))
    if not files:
        return None
    raw = json.loads(files[-1].read_text(encoding="utf-8"))
    check = raw["check"]
    tiny = repo.yaml("conf/model/tiny_llava.yaml")
    v, t = tiny["vision"], tiny["text"]
    vision = Tower(v["num_layers"], v["hidden_size"], v["intermediate_size"], v["num_heads"], v["num_heads"], False)
    llm_no_head = Tower(t["num_layers"], t["hidden_size"], t["intermediate_size"], t["num_heads"],
                        t["num_kv_heads"], True)
    h = t["hidden_size"]
    projector = v["hidden_size"] * h + h * h
    norms = t["num_layers"] * 2 * h + h                       # RMSNorm weights: stored, not matmuls
    biases = 2 * h                                            # projector biases
    vocab = round((check["trainable_parameters"] - llm_no_head.matmul_params() - projector - norms - biases) / h)
    llm = dataclasses.replace(llm_no_head, vocab=vocab)       # tied: the embedding is the head
    patches = (v["image_size"] // v["patch_size"]) ** 2
    model = VLM("tiny_llava", "conf/model/tiny_llava.yaml", vision, patches + 1,
                3 * v["patch_size"] ** 2 * v["hidden_size"], patches, projector, llm, t["max_position_embeddings"], 0)
    row = check["tokens_per_pair"] / 2
    ours = 2 * row_flops(model, row, 1, Training("full"))["total"]
    forward = 2 * row_flops(model, row, 1, None)["total"]
    mfu = {side: raw["summary"]["values"][side]["mfu_percent"]["median"] for side in raw["summary"]["values"]}
    repo.sources["cpu_crosscheck"] = f"{files[-1].relative_to(repo.root)}: check.model_flops_per_pair, summary MFU"
    return {"file": str(files[-1].relative_to(repo.root)), "vocab_implied": vocab,
            "ours_flops_per_pair": ours, "measured_flops_per_pair": check["model_flops_per_pair"],
            "ours_forward_per_pair": forward, "measured_forward_per_pair": check["forward_flops_per_pair"],
            "six_n_tokens_per_pair": check["six_n_tokens_per_pair"],
            "ratio": ours / check["model_flops_per_pair"],
            "cpu_matmul_peak_gflops": check["matmul"]["peak_flops"] / 1e9, "cpu_mfu_percent_median": mfu}


# ---- output ---------------------------------------------------------------------------------------------------
def hours(lo: float, hi: float) -> str:
    return f"{lo:.1f}-{hi:.1f} h" if hi >= 1 else f"{lo * 60:.0f}-{hi * 60:.0f} min"


def markdown(rows: list[Row], gpus: int, a: Assumptions, calibration: dict[str, Any],
             cross: dict[str, Any] | None, sources: dict[str, str]) -> str:
    lines = [f"| stage | data | {gpus}x H100 (low-high) | 1x H100 | GiB/GPU | set-up that fits | API $ |"
             " steps | save_steps | notes |", "|---|---|---:|---:|---:|---|---:|---:|---:|---|"]
    for r in rows:
        mem = f"{r.memory_gib:.0f}" if r.memory_gib is not None else "-"
        one = hours(r.hours_1gpu_low, r.hours_1gpu_high) if r.hours_1gpu_high else "-"
        lines.append(f"| {r.stage} | {r.data} | {hours(r.hours_low, r.hours_high)} | {one} | {mem} | {r.config} | "
                     f"{r.usd:,.0f} | {r.steps or '-'} | {r.save_steps or '-'} | {r.notes} |")
    train = [r for r in rows if r.steps]
    lines += ["", f"Checkpoint cadence: `save_steps` = {a.max_loss_minutes:g} min / the slow step time, so a lost "
              f"node costs at most {a.max_loss_minutes:g} wall minutes ({a.max_loss_minutes * gpus:g} GPU-minutes) "
              "of work:"]
    for r in train:
        d = r.detail
        lines.append(f"- {r.stage}, {r.data}: step (global batch {d['global_batch']}) {r.step_seconds_high:.1f} s "
                     f"at MFU {a.mfu_train_low:.0%} -> save_steps {r.save_steps}; checkpoint "
                     f"{d['checkpoint_bytes'] / 1e9:.1f} GB ({d['checkpoint_write_seconds']:.0f} s at "
                     f"{a.ckpt_write_gb_s:g} GB/s, {d['checkpoint_overhead_share']:.1%} of the interval)"
                     + (f"; conf's save_steps {d['configured_save_steps']} = every "
                        f"{d['configured_save_minutes_high']:.1f} min" if d["configured_save_steps"] else ""))
    lines += ["", "Memory per GPU (GiB; no checkpointing / checkpointing) at the stage's micro-batch and maximum "
              "length (DDP = also one GPU alone):", "", "| stage | micro-batch rows x max positions | DDP | ZeRO-2 | FSDP | ZeRO-3 |",
              "|---|---|---|---|---|---|"]
    for r in train:
        m = r.detail["memory_gib"]
        cells = " | ".join(f"{m[k]['no_checkpointing']:.0f} / {m[k]['checkpointing']:.0f}"
                           for k in ("ddp", "deepspeed_zero2", "fsdp", "deepspeed_zero3"))
        lines.append(f"| {r.stage} ({r.data.split(':')[0]}) | {r.detail['micro_rows']} x "
                     f"{r.detail['max_positions']} | {cells} |")
    variants = "; ".join(f"{k} ({v['image_tokens']} image tokens, {v['positions_per_sample']:.0f} positions/sample): "
                         f"MFU {v['implied_mfu']:.0%}" for k, v in calibration["variants"].items())
    lines += ["", f"Calibration: FIRE's published {calibration['published_hours']:g} h on 8xA100 per 1M dialogues "
              f"({calibration['model']}, LoRA q/k/v, checkpointing) would take, of A100's "
              f"{a.a100_peak_bf16_tflops:g} TFLOP/s under this accounting: {variants}."]
    if cross:
        lines += [f"CPU cross-check ({cross['file']}): this accounting gives {cross['ours_flops_per_pair'] / 1e6:.1f} "
                  f"MFLOP per DPO pair (forward {cross['ours_forward_per_pair'] / 1e6:.1f}) on the tiny model; torch's "
                  f"flop counter measured {cross['measured_flops_per_pair'] / 1e6:.1f} "
                  f"(forward {cross['measured_forward_per_pair'] / 1e6:.1f}), ratio {cross['ratio']:.3f}; "
                  f"6*N*tokens would say {cross['six_n_tokens_per_pair'] / 1e6:.1f}. MFU measured there vs the "
                  f"{cross['cpu_matmul_peak_gflops']:.0f} GFLOP/s fp32 CPU matmul peak (median %): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in cross["cpu_mfu_percent_median"].items())
                  + " -- a check of the FLOP count, not a GPU prediction."]
    lines += ["", "Read from files:", ""] + [f"- {k}: {v}" for k, v in sources.items()]
    reasons = a.doc()
    lines += ["", "Assumptions (override with --set name=value):", ""]
    lines += [f"- {k} = {v}: {reasons.get(k, '')}" for k, v in dataclasses.asdict(a).items()]
    return "\n".join(lines)


def parse_sets(items: list[str]) -> dict[str, Any]:
    fields = {f.name: f.type for f in dataclasses.fields(Assumptions)}
    out: dict[str, Any] = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in fields:
            raise SystemExit(f"cost_model: no assumption named {name!r} (known: {', '.join(fields)})")
        out[name] = int(value) if fields[name] in ("int", int) else float(value)
    return out


def run(argv: list[str] | None = None) -> tuple[list[Row], str, dict[str, Any]]:
    """Compute everything; returns the rows, the Markdown and the raw report (main prints and writes them)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--judge-in-usd-per-m", type=float, default=None,
                        help="judge price per 1M prompt tokens (default: conf/silkie/judge/api.yaml)")
    parser.add_argument("--judge-out-usd-per-m", type=float, default=None)
    parser.add_argument("--references", type=Path, default=REFERENCES)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override an assumption")
    parser.add_argument("--no-json", action="store_true", help="print only")
    args = parser.parse_args(argv)
    a = Assumptions(**parse_sets(args.set))
    repo = Repo(ROOT, args.references)
    prices = (args.judge_in_usd_per_m if args.judge_in_usd_per_m is not None
              else repo.conf("judge_price_in", "conf/silkie/judge/api.yaml", "prices", "prompt_per_1m"),
              args.judge_out_usd_per_m if args.judge_out_usd_per_m is not None
              else repo.conf("judge_price_out", "conf/silkie/judge/api.yaml", "prices", "completion_per_1m"))
    pub = read_published(repo)
    rows = build_rows(repo, pub, a, args.gpus, prices)
    calibration = fire_calibration(repo, pub, a)
    cross = cpu_crosscheck(repo)
    text = markdown(rows, args.gpus, a, calibration, cross, repo.sources)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    report = {"command": "benchmarks/cost_model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git_commit": commit,
              "gpus": args.gpus, "judge_prices_usd_per_m": prices, "assumptions": dataclasses.asdict(a),
              "sources": repo.sources, "published": dataclasses.asdict(pub),
              "rows": [dataclasses.asdict(r) for r in rows], "fire_calibration": calibration,
              "cpu_crosscheck": cross, "table": text, "no_json": args.no_json}
    return rows, text, report


def main(argv: list[str] | None = None) -> int:
    rows, text, report = run(argv)
    print(text)
    if not report["no_json"]:
        out = ROOT / "benchmarks" / "results"
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"cost_model-{time.strftime('%Y-%m-%dT%H%MZ', time.gmtime())}.json"
        path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"\nraw: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
