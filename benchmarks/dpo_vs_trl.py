"""Our DPO trainer (silkfire.train.dpo) vs TRL's DPOTrainer on the same tiny VLM, tokens, pairs and threads.

    .venv/bin/python benchmarks/dpo_vs_trl.py            # or: make bench  (defaults: ~8 min on 2 cores)
    .venv/bin/python benchmarks/dpo_vs_trl.py --rounds 5 --steps 20 --warmup 2 --batch 8 --threads 2

Needs the bench extra (`pip install -e '.[bench]'`: trl==1.16.0, datasets==5.2.0).

Protocol (issue 16):
* Same inputs: the default tiny_llava model built by the pipeline's own builder, one start folder, the same pairs
  (correct vs failing scripted answers to world questions), sigmoid loss, beta 0.1, no NLL term, vision tower
  frozen, constant learning rate, AdamW without weight decay, float32, one thread setting for every process.
* Same tokens: our encoder starts each row with the tokenizer's <s>, TRL's collator does not (it tokenizes the
  chat template with add_special_tokens=False), so our side's <s> is dropped here (``--keep-bos`` keeps it). A check
  process compares the first batch's token ids row by row and both sides' DPO loss on it (a noisy policy against
  the start model as reference, so the loss is not log 2): they must agree to ~1e-4.
* Same clock start: in each side's process, right after the model is loaded (the same loader, the same folder).
  From there ours encodes the pairs, runs its one-time reference pass and trains; TRL builds its dataset and
  trainer (which loads its reference model from the same folder) and trains, with its reference model's forward
  in every step (TRL 1.16 refuses ``precompute_ref_log_probs`` for vision datasets).
* Three numbers per side and round: (1) steady-state training pairs/s: steps after ``--warmup`` warm-up steps,
  timed between optimizer-step ends (our step callback; TRL's on_step_end), the same warm-up on both sides;
  (2) end to end: clock start to the last step's end, pairs/s over all steps (each side's reference work and data
  preparation included); (3) peak RSS growth: peak resident memory minus the resident memory at the clock start
  (imports and the model load excluded), from the kernel's ru_maxrss and a 20 ms psutil sampler.
* Ours four ways: shared_prefix off/on x group_by_length off/on (the trainer's default is on: length-sorted
  mega-batches, less padding). TRL with its defaults (random batches, no length grouping, left-padded prompts;
  its collator runs the processor, image preprocessing and tokenization, on every batch inside its steps).
  Both sides' processes import the same modules before the model load, so neither pays an import after it.
* Rounds: ``--rounds`` rounds, one process per side per round, the order rotated each round. Before a round the
  script waits (at most ``--settle`` s) for the 1-minute load average to fall to ``--max-load``; a round that starts
  above it is refused and run once more; a second refusal is kept in the JSON, left out of the medians. The load
  average before/after and the CPU seconds other processes used during each round are recorded.
* MFU: a 2048^3 fp32 matmul at the same thread count gives the machine's peak; model FLOPs per pair are counted
  with torch.utils.flop_counter on the policy's forward + backward of each check pair (its chosen and rejected
  rows, no padding, vision tower frozen: no backward through it); achieved FLOP/s = that x steady pairs/s. The
  same per-pair count serves every side, so it measures useful work, not work done (TRL's reference forward and
  our shared prefix's savings are not in it; logits counted where our loss reads them: answer positions).

Prints a side-by-side table (medians, min-max, ratios ours/TRL per round) and writes every round's raw numbers,
the load, versions, CPU model, threads, date and git commit to benchmarks/results/dpo_vs_trl-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BETA = 0.1
LEARNING_RATE = 1e-4
ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> (side, shared_prefix, group_by_length)
    "ours-sp_off-gbl_off": ("ours", False, False),
    "ours-sp_on-gbl_off": ("ours", True, False),
    "ours-sp_off-gbl_on": ("ours", False, True),
    "ours-sp_on-gbl_on": ("ours", True, True),
    "trl": ("trl", False, False),
}


# ---- shared inputs ---------------------------------------------------------------------------------------------
def prepare(work: Path, n_pairs: int, seed: int = 0) -> dict[str, str]:
    """World, start model (default tiny_llava), a noisy policy copy (for the loss check), and the pairs file."""
    import torch
    from omegaconf import OmegaConf

    from silkfire.io import write_jsonl
    from silkfire.models.config import ModelConfig
    from silkfire.models.loading import load_vlm
    from silkfire.models.testing import make_test_world
    from silkfire.models.tiny_llava import build_tiny_llava
    from silkfire.policies.instructions import world_instructions
    from silkfire.policies.scripted import ScriptedPolicy
    from silkfire.world.config import WorldConfig
    from silkfire.world.texts import world_texts

    world = make_test_world(work / "world", train_scenes=max(8, n_pairs // 6), val_scenes=1, test_scenes=1, seed=seed)
    model_cfg = ModelConfig.from_mapping(OmegaConf.load(ROOT / "conf/model/tiny_llava.yaml"))
    start = build_tiny_llava(model_cfg, world_texts(WorldConfig()), work / "start", seed=seed)
    model, processor = load_vlm(start, device="cpu")
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # a policy that differs from the reference, for the loss check
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(work / "policy")
    processor.save_pretrained(work / "policy")

    instructions = world_instructions(world, families=["open", "probe", "mme"])
    good = ScriptedPolicy("correct", WorldConfig()).respond(instructions, world, seed)
    pairs = []
    for profile in ("hallucinate", "miscount", "wrong_color", "terse"):
        bad = ScriptedPolicy(profile, WorldConfig()).respond(instructions, world, seed)
        pairs += [{"id": f"{i.id}/{profile}", "source_id": i.id, "prompt": i.prompt, "img_path": i.image,
                   "chosen": c, "rejected": r, "chosen_score": 5.0, "rejected_score": 2.0}
                  for i, c, r in zip(instructions, good, bad) if c != r]
    random.Random(seed).shuffle(pairs)
    if len(pairs) < n_pairs:
        raise SystemExit(f"only {len(pairs)} pairs available; ask for fewer (--pairs)")
    write_jsonl(work / "pairs.jsonl", pairs[:n_pairs])
    return {"world": str(world), "start": str(start), "policy": str(work / "policy"),
            "pairs": str(work / "pairs.jsonl")}


def trl_dataset(pairs_path: str, world: str) -> Any:
    """The pairs in TRL's conversational vision format (images + prompt/chosen/rejected messages)."""
    from datasets import Dataset, Image, Sequence

    from silkfire.io import read_records

    rows = read_records(pairs_path)
    return Dataset.from_dict({
        "images": [[str(Path(world) / r["img_path"])] for r in rows],
        "prompt": [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r["prompt"]}]}]
                   for r in rows],
        "chosen": [[{"role": "assistant", "content": [{"type": "text", "text": r["chosen"]}]}] for r in rows],
        "rejected": [[{"role": "assistant", "content": [{"type": "text", "text": r["rejected"]}]}] for r in rows],
    }).cast_column("images", Sequence(Image()))


def trl_trainer(model: Any, ref_model: Any, processor: Any, dataset: Any, out: Path, steps: int, batch: int,
                callbacks: list[Any] | None = None) -> Any:
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(out), per_device_train_batch_size=batch, max_steps=steps, learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant", warmup_steps=0, beta=BETA, loss_type=["sigmoid"], max_length=None,
        bf16=False, use_cpu=True, gradient_checkpointing=False, precompute_ref_log_probs=False, report_to="none",
        save_strategy="no", logging_steps=max(1, steps), dataloader_num_workers=0, disable_tqdm=True, seed=0,
        weight_decay=0.0, adam_beta2=0.98, max_grad_norm=1.0,
    )
    return DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset, processing_class=processor,
                      callbacks=callbacks)


def strip_bos(data: Any, bos_id: int | None) -> Any:
    """Drop a leading <s> from every chosen/rejected row (TRL's tokens have none); labels there are -100."""
    if bos_id is None:
        return data
    for ids, labels in ((data.chosen_ids, data.chosen_labels), (data.rejected_ids, data.rejected_labels)):
        for index, row in enumerate(ids):
            if len(row) and int(row[0]) == bos_id:
                ids[index], labels[index] = row[1:], labels[index][1:]
    return data


def patch_encoding(keep_bos: bool) -> None:
    """Our trainer's encode_pairs, minus the leading <s> (unless ``keep_bos``)."""
    if keep_bos:
        return
    import silkfire.train.dpo as dpo

    original = dpo.encode_pairs

    def encode_pairs(pairs: Any, processor: Any, *args: Any, **kwargs: Any) -> Any:
        data, kept = original(pairs, processor, *args, **kwargs)
        return strip_bos(data, processor.tokenizer.bos_token_id), kept

    dpo.encode_pairs = encode_pairs


# ---- measuring inside a child process --------------------------------------------------------------------------
def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB


class Clock:
    """The clock start (after the model load) and memory from there: RSS then, a 20 ms RSS sampler, ru_maxrss."""

    def __init__(self) -> None:
        self.t0: float | None = None
        self.steps: list[float] = []
        self._stop = threading.Event()
        self._peak = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.rss0, self.maxrss0 = rss_bytes(), maxrss_bytes()
        self._peak = self.rss0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.t0 = time.perf_counter()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self._peak = max(self._peak, rss_bytes())

    def step(self) -> None:
        self.steps.append(time.perf_counter())

    def result(self, steps: int, batch: int, warmup: int) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        maxrss = maxrss_bytes()
        sampled = max(self._peak, rss_bytes())
        # ru_maxrss is exact but may still hold the model load's peak; then the sampler's peak is the one after t0
        peak = maxrss if maxrss > self.maxrss0 else sampled
        assert self.t0 is not None
        if len(self.steps) != steps:
            raise RuntimeError(f"{len(self.steps)} step ends recorded, {steps} expected")
        steady = self.steps[-1] - self.steps[warmup - 1] if warmup > 0 else self.steps[-1] - self.t0
        return {
            "steps": steps, "batch": batch, "warmup_steps": warmup,
            "step_end_seconds": [t - self.t0 for t in self.steps],
            "first_step_end_seconds": self.steps[0] - self.t0,
            "steady_seconds": steady, "steady_pairs_per_second": (steps - warmup) * batch / steady,
            "end_to_end_seconds": self.steps[-1] - self.t0,
            "end_to_end_pairs_per_second": steps * batch / (self.steps[-1] - self.t0),
            "rss_at_start_mb": self.rss0 / 2**20, "maxrss_at_start_mb": self.maxrss0 / 2**20,
            "maxrss_end_mb": maxrss / 2**20, "sampled_peak_rss_mb": sampled / 2**20,
            "peak_rss_growth_mb": (peak - self.rss0) / 2**20,
        }


def run_ours(inputs: dict[str, str], args: argparse.Namespace, shared_prefix: bool, group_by_length: bool,
             out: Path) -> dict[str, Any]:
    import silkfire.models.loading as loading
    from silkfire.train.dpo import DPOConfig, train_dpo

    patch_encoding(args.keep_bos)
    clock = Clock()
    load = loading.load_vlm

    def load_then_start(*a: Any, **k: Any) -> Any:  # train_dpo's own model load; the clock starts when it returns
        loaded = load(*a, **k)
        clock.start()
        return loaded

    loading.load_vlm = load_then_start
    config = DPOConfig(beta=BETA, rpo_alpha=0.0, learning_rate=LEARNING_RATE, max_steps=args.steps,
                       batch_size=args.batch, warmup_ratio=0.0, lr_scheduler="constant", weight_decay=0.0,
                       eval_fraction=0.0, logging_steps=max(1, args.steps), save_steps=0, num_threads=args.threads,
                       progress=False, freeze=("vision_tower",), shared_prefix=shared_prefix,
                       group_by_length=group_by_length, device="cpu", dtype="float32", resume=False,
                       lora=None, eval_steps=0)  # full fine-tuning, as TRL's side

    def callback(event: str, step: int, values: dict[str, Any]) -> None:
        if event == "step":
            clock.step()

    result = train_dpo(inputs["start"], Path(inputs["pairs"]), Path(inputs["world"]), config, out, callbacks=[callback])
    loading.load_vlm = load
    m = result.metrics
    return {**clock.result(args.steps, args.batch, args.warmup), "reference": "one pass before training",
            "reference_seconds": m["reference_seconds"], "encode_seconds": m["encode_seconds"],
            "train_loop_seconds": m["train_seconds"], "final_loss": m["loss"],
            "first_logged_loss": result.history[0]["loss"] if result.history else None}


def run_trl(inputs: dict[str, str], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from transformers import TrainerCallback

    from silkfire.models.loading import load_vlm
    from silkfire.train.sft import freeze_parts

    model, processor = load_vlm(inputs["start"], dtype="float32", device="cpu")
    clock = Clock()
    clock.start()  # as ours: right after the model load
    freeze_parts(model, ["vision_tower"])
    model.train()

    class StepEnds(TrainerCallback):
        def on_step_end(self, *a: Any, **k: Any) -> None:
            clock.step()

    trainer = trl_trainer(model, None, processor, trl_dataset(inputs["pairs"], inputs["world"]), out, args.steps,
                          args.batch, callbacks=[StepEnds()])
    setup = time.perf_counter() - clock.t0
    output = trainer.train()
    return {**clock.result(args.steps, args.batch, args.warmup),
            "reference": "reference model (loaded from the start folder in the trainer's init) forward every step",
            "setup_seconds": setup, "final_loss": float(output.training_loss)}


def run_check(inputs: dict[str, str], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Same tokens and same loss on the first batch; model FLOPs per pair; the machine's fp32 matmul peak."""
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.flop_counter import FlopCounterMode

    from silkfire.io import read_records
    from silkfire.models.loading import load_vlm
    from silkfire.train.dpo import (DPOConfig, batch_loss, collate_pairs, encode_pairs, reference_logps,
                                    sequence_logps)
    from silkfire.train.sft import freeze_parts

    policy, processor = load_vlm(inputs["policy"], dtype="float32", device="cpu")
    reference, _ = load_vlm(inputs["start"], dtype="float32", device="cpu")
    pad = processor.tokenizer.pad_token_id
    pairs = read_records(inputs["pairs"])[:args.batch]
    world = Path(inputs["world"])

    def our_loss(keep_bos: bool, shared_prefix: bool) -> tuple[float, Any]:
        data, _ = encode_pairs(pairs, processor, world, max_length=None, progress=False)
        if not keep_bos:
            strip_bos(data, processor.tokenizer.bos_token_id)
        data.ref_chosen, data.ref_rejected = reference_logps(reference, data, pad, args.batch, progress=False,
                                                             shared_prefix=shared_prefix)
        with torch.no_grad():
            loss, _ = batch_loss(policy.eval(), data, list(range(len(data))), pad,
                                 DPOConfig(beta=BETA, rpo_alpha=0.0, progress=False, shared_prefix=shared_prefix))
        return float(loss), data

    ours_off, data = our_loss(args.keep_bos, False)
    ours_on, _ = our_loss(args.keep_bos, True)
    ours_bos, _ = our_loss(True, False)

    dataset = trl_dataset(inputs["pairs"], inputs["world"]).select(range(args.batch))
    trainer = trl_trainer(policy, reference, processor, dataset, out, 1, args.batch)
    loader = DataLoader(trainer.train_dataset, batch_size=args.batch, shuffle=False, collate_fn=trainer.data_collator)
    trl_batch = next(iter(loader))
    policy.eval()
    reference.eval()
    with torch.no_grad():
        theirs = float(trainer.compute_loss(policy, trl_batch))
    # tokens, row by row: TRL's row i / n + i is pair i's chosen / rejected side (left-padded prompt, right-padded
    # answer)
    n = len(data)
    mismatches = []
    for row in range(2 * n):
        mask = trl_batch["attention_mask"][row].bool()
        trl_ids = trl_batch["input_ids"][row][mask].tolist()
        trl_answer = trl_batch["input_ids"][row][trl_batch["completion_mask"][row].bool()].tolist()
        ids = (data.chosen_ids if row < n else data.rejected_ids)[row % n]
        labels = (data.chosen_labels if row < n else data.rejected_labels)[row % n]
        answer = ids[labels != -100].tolist()
        if trl_ids != ids.tolist() or trl_answer != answer:
            mismatches.append({"row": row, "ours": ids.tolist(), "trl": trl_ids, "ours_answer": answer,
                               "trl_answer": trl_answer})
    same_pixels = bool(torch.allclose(trl_batch["pixel_values"][:n].float(),
                                      data.pixel_values.batch(data.image_index)["pixel_values"].float(), atol=1e-6))

    # model FLOPs of the policy's forward + backward per pair (two rows, no padding, vision tower frozen)
    model, _ = load_vlm(inputs["start"], dtype="float32", device="cpu")
    freeze_parts(model, ["vision_tower"])
    model.train()
    counter = FlopCounterMode(display=False)
    forward = FlopCounterMode(display=False)
    with counter:
        for index in range(n):
            logps, _ = sequence_logps(model, collate_pairs(data, [index], pad))
            logps.sum().backward()
    with forward, torch.no_grad():
        for index in range(n):
            sequence_logps(model, collate_pairs(data, [index], pad))
    tokens = sum(len(data.chosen_ids[i]) + len(data.rejected_ids[i]) for i in range(n))
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    # the machine's fp32 matmul peak at this thread count
    size = args.matmul_size
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        torch.mm(a, b)
    times = []
    for _ in range(args.matmul_repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - started)
    flop = 2 * size ** 3
    return {
        "tokens_identical": not mismatches, "token_mismatches": mismatches[:4], "pixels_identical": same_pixels,
        "rows": 2 * n, "keep_bos": args.keep_bos,
        "loss_ours_shared_prefix_off": ours_off, "loss_ours_shared_prefix_on": ours_on, "loss_trl": theirs,
        "loss_diff_off": abs(ours_off - theirs), "loss_diff_on": abs(ours_on - theirs),
        "loss_ours_with_bos": ours_bos, "loss_diff_with_bos": abs(ours_bos - theirs),
        "flops_method": "torch.utils.flop_counter.FlopCounterMode over the policy's forward+backward of each check "
                        "pair alone (chosen + rejected rows, no padding), vision tower frozen",
        "model_flops_per_pair": counter.get_total_flops() / n, "forward_flops_per_pair": forward.get_total_flops() / n,
        "tokens_per_pair": tokens / n, "parameters": params, "trainable_parameters": trainable,
        "six_n_tokens_per_pair": 6 * params * tokens / n,
        "matmul": {"size": size, "seconds": times, "peak_flops": flop / min(times),
                   "median_flops": flop / statistics.median(times)},
    }


def preimport() -> None:
    """Every module either side uses, imported before the model load in every process: the same baseline for the
    clock start and the RSS there (a lazy import after it would count as the side's training cost)."""
    import datasets  # noqa: F401
    import psutil  # noqa: F401
    import safetensors.torch  # noqa: F401
    import tqdm.auto  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForImageTextToText, TrainerCallback, get_scheduler  # noqa: F401
    from trl import DPOConfig, DPOTrainer  # noqa: F401

    import silkfire.models.loading  # noqa: F401
    import silkfire.train.dpo  # noqa: F401
    import silkfire.train.sft  # noqa: F401


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    preimport()
    inputs = json.loads(Path(args.inputs).read_text())
    out = Path(args.workdir) / f"{args.variant}-{os.getpid()}"
    if args.variant == "check":
        result = run_check(inputs, args, out)
    elif args.variant == "trl":
        result = run_trl(inputs, args, out)
    else:
        _, shared_prefix, group_by_length = VARIANTS[args.variant]
        result = run_ours(inputs, args, shared_prefix, group_by_length, out)
    result["threads"] = torch.get_num_threads()
    print("RESULT " + json.dumps(result), flush=True)


# ---- driver ----------------------------------------------------------------------------------------------------
def busy_jiffies() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, wall clock) from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK"), time.monotonic()


def own_cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def spawn(variant: str, args: argparse.Namespace, inputs_file: Path, script: str = __file__) -> dict[str, Any]:
    """One side (or the check) in a fresh process of ``script`` (this benchmark, or one built on its protocol)."""
    command = [sys.executable, script, "--variant", variant, "--inputs", str(inputs_file), "--workdir", args.workdir,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
               "--threads", str(args.threads), "--matmul-size", str(args.matmul_size),
               "--matmul-repeats", str(args.matmul_repeats), *(["--keep-bos"] if args.keep_bos else [])]
    threads = str(args.threads)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONHASHSEED": "0"}
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        raise SystemExit(f"{variant} failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["process_seconds"] = time.perf_counter() - started
    return result


def settle(max_load: float, limit: float) -> float:
    """Wait (up to ``limit`` s) for the 1-minute load average to fall to ``max_load``; returns the seconds waited."""
    started = time.monotonic()
    while os.getloadavg()[0] > max_load and time.monotonic() - started < limit:
        time.sleep(2.0)
    return time.monotonic() - started


def run_round(index: int, attempt: int, args: argparse.Namespace, inputs_file: Path,
              sides: Sequence[str] = tuple(VARIANTS), script: str = __file__) -> dict[str, Any]:
    waited = settle(args.max_load, args.settle)
    load_before = os.getloadavg()[0]
    names = list(sides)
    shift = index % len(names)
    order = names[shift:] + names[:shift]  # rotated each round: every side runs in every position
    busy0, wall0 = busy_jiffies()
    own0 = own_cpu_seconds()
    results = {name: spawn(name, args, inputs_file, script) for name in order}
    busy1, wall1 = busy_jiffies()
    other = (busy1 - busy0) - (own_cpu_seconds() - own0)
    return {"round": index, "attempt": attempt, "order": order, "settle_wait_seconds": waited,
            "load_before": load_before, "load_after": os.getloadavg()[0], "refused": load_before > args.max_load,
            "wall_seconds": wall1 - wall0, "other_processes_cpu_seconds": max(0.0, other),
            "other_processes_cpu_fraction": max(0.0, other) / max(1e-9, (wall1 - wall0) * (os.cpu_count() or 1)),
            "results": results}


def run_rounds(args: argparse.Namespace, inputs_file: Path, sides: Sequence[str] = tuple(VARIANTS),
               script: str = __file__, unit: str = "pairs/s") -> list[dict[str, Any]]:
    """``args.rounds`` rounds; a round refused for load is run once more (both kept in the list)."""
    rounds = []
    for index in range(args.rounds):
        for attempt in (0, 1):
            r = run_round(index, attempt, args, inputs_file, sides, script)
            rounds.append(r)
            print(f"round {index}{' (again)' if attempt else ''}: load {r['load_before']:.2f} -> "
                  f"{r['load_after']:.2f}{' REFUSED' if r['refused'] else ''}, {r['wall_seconds']:.0f} s; "
                  + ", ".join(f"{n} {v['steady_pairs_per_second']:.1f}" for n, v in r["results"].items())
                  + f" {unit}", flush=True)
            if not r["refused"]:
                break
    return rounds


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


METRICS = {  # key -> (label, format, ratio kind)
    "steady_pairs_per_second": ("(1) steady-state training, pairs/s", "{:.2f}"),
    "end_to_end_pairs_per_second": ("(2) end to end incl. data + reference work, pairs/s", "{:.2f}"),
    "end_to_end_seconds": ("    end to end, seconds", "{:.2f}"),
    "peak_rss_growth_mb": ("(3) peak RSS growth after load, MB", "{:.0f}"),
    "achieved_gflops": ("    achieved GFLOP/s (model FLOPs, steady)", "{:.2f}"),
    "mfu_percent": ("    MFU, % of fp32 matmul peak", "{:.2f}"),
}


def summarize(rounds: list[dict[str, Any]], check: dict[str, Any]) -> dict[str, Any]:
    accepted = [r for r in rounds if not r["refused"]]
    use = accepted or rounds
    flops_per_pair, peak = check["model_flops_per_pair"], check["matmul"]["peak_flops"]
    for r in rounds:
        for result in r["results"].values():
            result["achieved_gflops"] = flops_per_pair * result["steady_pairs_per_second"] / 1e9
            result["mfu_percent"] = 100 * flops_per_pair * result["steady_pairs_per_second"] / peak
    summary: dict[str, Any] = {"rounds_used": [r["round"] for r in use], "all_rounds_refused": not accepted,
                               "values": {}, "ratios_ours_over_trl": {}}
    for name in VARIANTS:
        summary["values"][name] = {key: spread([r["results"][name][key] for r in use]) for key in METRICS}
        if name != "trl":
            summary["ratios_ours_over_trl"][name] = {
                key: spread([r["results"][name][key] / r["results"]["trl"][key] for r in use]) for key in METRICS}
    return summary


def table(summary: dict[str, Any], check: dict[str, Any], meta: dict[str, Any], args: argparse.Namespace) -> str:
    def cell(s: dict[str, float], fmt: str) -> str:
        return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}-{fmt.format(s['max'])}]"

    names = list(VARIANTS)
    heads = {"ours-sp_off-gbl_off": "ours sp off, gbl off", "ours-sp_on-gbl_off": "ours sp ON, gbl off",
             "ours-sp_off-gbl_on": "ours sp off, gbl ON", "ours-sp_on-gbl_on": "ours sp ON, gbl ON",
             "trl": f"TRL {meta['versions']['trl']}"}
    lines = [
        f"DPO on tiny_llava, {args.steps} steps x {args.batch} pairs ({args.warmup} warm-up steps excluded from (1) on "
        f"both sides), {args.threads} thread(s), beta {BETA}, {meta['cpu_model']}",
        f"median [min-max] over {len(summary['rounds_used'])} round(s) {summary['rounds_used']}"
        + ("  ** EVERY ROUND WAS REFUSED (load > --max-load): the numbers are unreliable **"
           if summary["all_rounds_refused"] else ""),
        "sp = shared_prefix, gbl = group_by_length (our trainer's default: on); TRL: random batches, its reference "
        "model's forward every step (precompute_ref_log_probs is refused for vision data); ours: one reference pass",
        "", "| metric | " + " | ".join(heads[n] for n in names) + " |", "|---" + "|---:" * len(names) + "|"]
    for key, (label, fmt) in METRICS.items():
        lines.append(f"| {label} | " + " | ".join(cell(summary["values"][n][key], fmt) for n in names) + " |")
    lines += ["", "ratios ours/TRL, per round, median [min-max] (pairs/s and FLOP/s: > 1 = ours faster; seconds and "
              "RSS: < 1 = ours less)", "", "| ratio | " + " | ".join(heads[n] for n in names[:-1]) + " |",
              "|---" + "|---:" * (len(names) - 1) + "|"]
    for key, (label, _) in METRICS.items():
        if key in ("achieved_gflops", "mfu_percent"):
            continue
        lines.append(f"| {label} | " + " | ".join(cell(summary["ratios_ours_over_trl"][n][key], "{:.2f}")
                                                    for n in names[:-1]) + " |")
    lines += [
        "",
        f"same tokens (first {check['rows'] // 2} pairs, {check['rows']} rows, ours without <s>): "
        f"{check['tokens_identical']}; same pixels: {check['pixels_identical']}",
        f"first-batch DPO loss, policy != reference: ours sp off {check['loss_ours_shared_prefix_off']:.6f} | "
        f"ours sp on {check['loss_ours_shared_prefix_on']:.6f} | TRL {check['loss_trl']:.6f} | "
        f"|diff| {check['loss_diff_off']:.1e} / {check['loss_diff_on']:.1e} "
        f"(with our <s> kept: {check['loss_ours_with_bos']:.6f}, |diff| {check['loss_diff_with_bos']:.1e})",
        f"FLOPs: {check['model_flops_per_pair'] / 1e6:.1f} MFLOP per pair (forward+backward, flop_counter; "
        f"6 x {check['parameters'] / 1e6:.2f}M params x {check['tokens_per_pair']:.0f} tokens would say "
        f"{check['six_n_tokens_per_pair'] / 1e6:.1f}); fp32 matmul peak {check['matmul']['peak_flops'] / 1e9:.1f} "
        f"GFLOP/s ({check['matmul']['size']}^3, {args.threads} threads)",
        "load average (1 min) before -> after each round: " + ", ".join(
            f"r{r['round']}{'a' if r['attempt'] else ''}: {r['load_before']:.2f}->{r['load_after']:.2f}"
            f"{' REFUSED' if r['refused'] else ''} (other CPU {100 * r['other_processes_cpu_fraction']:.0f}%)"
            for r in meta["rounds"]),
    ]
    return "\n".join(lines)


def environment(args: argparse.Namespace) -> dict[str, Any]:
    from importlib.metadata import version

    def git(*command: str) -> str:
        try:
            return subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--", "src", "benchmarks")),
        "cpu_model": cpu, "cpu_count": os.cpu_count(), "threads": args.threads, "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: version(name) for name in ("torch", "transformers", "trl", "datasets", "accelerate",
                                                      "silkfire")},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=160, help="pairs in the data (>= steps x batch: one epoch)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the steady-state number, both sides")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-load", type=float, default=1.5, help="refuse a round that starts above this load")
    parser.add_argument("--settle", type=float, default=30.0, help="at most this many seconds of waiting per round "
                        "for the load average to fall (our own previous round raises it too)")
    parser.add_argument("--keep-bos", action="store_true", help="keep our <s> (then the tokens differ from TRL's)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--matmul-repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="default: benchmarks/results/dpo_vs_trl-<UTC date-time>.json")
    parser.add_argument("--variant", choices=(*VARIANTS, "check"), help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        child(args)
        return
    if args.warmup < 1 or args.steps <= args.warmup:
        raise SystemExit("need --steps > --warmup >= 1")
    meta = environment(args)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dpo-bench-") as work:
        args.workdir = work
        inputs = prepare(Path(work), max(args.pairs, args.steps * args.batch))
        inputs_file = Path(work) / "inputs.json"
        inputs_file.write_text(json.dumps(inputs))
        print(f"prepared in {time.perf_counter() - started:.0f} s; check ...", flush=True)
        check = spawn("check", args, inputs_file)
        print(f"tokens identical: {check['tokens_identical']}; first-batch loss ours "
              f"{check['loss_ours_shared_prefix_off']:.6f} / sp on {check['loss_ours_shared_prefix_on']:.6f} vs TRL "
              f"{check['loss_trl']:.6f}", flush=True)
        if not (check["tokens_identical"] and check["pixels_identical"]) or max(check["loss_diff_off"],
                                                                                 check["loss_diff_on"]) > 1e-4:
            print("WARNING: the two sides do not see the same inputs / compute the same loss (see 'check' in the "
                  "JSON): the comparison is not apples to apples", flush=True)
        rounds = run_rounds(args, inputs_file)
    meta["rounds"] = rounds
    meta["wall_seconds"] = time.perf_counter() - started
    summary = summarize(rounds, check)
    text = table(summary, check, meta, args)
    print(text)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    path = Path(args.json) if args.json else ROOT / "benchmarks" / "results" / f"dpo_vs_trl-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"args": {k: v for k, v in vars(args).items() if k not in ("variant", "inputs", "workdir")},
              **{k: v for k, v in meta.items() if k != "rounds"}, "check": check, "summary": summary,
              "rounds": rounds, "table": text}
    path.write_text(json.dumps(record, indent=2))
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
