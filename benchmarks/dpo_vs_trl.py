"""Our DPO loop (silkfire.train.dpo) vs TRL's DPOTrainer on the same tiny VLM, pairs and thread count, in one run.

    .venv/bin/python benchmarks/dpo_vs_trl.py [--pairs 96] [--steps 12] [--batch 8] [--threads 2] [--repeats 2]

Needs the bench extra (`pip install -e .[bench]`: trl==1.16.0). Each side trains in its own subprocess (so peak
RSS is its own), from the same model folder (the default tiny_llava config), on the same pairs (correct vs
failing scripted answers to world questions), sigmoid loss, beta 0.1, no NLL term, vision tower frozen,
constant learning rate, one thread setting. Ours: reference log-probs precomputed once + one concatenated
chosen+rejected forward per step. TRL 1.16: it refuses precomputed reference log-probs for vision data, so
its reference model runs every step, and its collator runs the processor on every batch.

A third subprocess checks that both compute the same loss on the same batch: a policy that differs from the
reference (the start model with seeded noise added) and the start model as reference, the first `--batch`
pairs, one loss from each implementation. Prints a side-by-side table; `--json PATH` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BETA = 0.1
LEARNING_RATE = 1e-4


# ---- shared inputs ---------------------------------------------------------------------------------------------
def prepare(work: Path, n_pairs: int, seed: int = 0) -> dict[str, str]:
    """World, start model (default tiny_llava), a noisy policy copy, and the pairs file."""
    import torch
    from omegaconf import OmegaConf

    from silkfire.io import write_jsonl
    from silkfire.models.config import ModelConfig
    from silkfire.models.testing import make_test_world
    from silkfire.models.tiny_llava import build_tiny_llava
    from silkfire.models.loading import load_vlm
    from silkfire.policies.instructions import world_instructions
    from silkfire.policies.scripted import ScriptedPolicy
    from silkfire.world.config import WorldConfig
    from silkfire.world.texts import world_texts

    root = Path(__file__).resolve().parents[1]
    world = make_test_world(work / "world", train_scenes=max(8, n_pairs // 6), val_scenes=1, test_scenes=1, seed=seed)
    model_cfg = ModelConfig.from_mapping(OmegaConf.load(root / "conf/model/tiny_llava.yaml"))
    start = build_tiny_llava(model_cfg, world_texts(WorldConfig()), work / "start", seed=seed)
    model, processor = load_vlm(start)
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
    import random

    random.Random(seed).shuffle(pairs)
    if len(pairs) < n_pairs:
        raise SystemExit(f"only {len(pairs)} pairs available; ask for fewer (--pairs)")
    write_jsonl(work / "pairs.jsonl", pairs[:n_pairs])
    return {"world": str(world), "start": str(start), "policy": str(work / "policy"), "pairs": str(work / "pairs.jsonl")}


def trl_dataset(pairs_path: str, world: str) -> Any:
    """The pairs in TRL's conversational vision format (images + prompt/chosen/rejected messages)."""
    from datasets import Dataset, Features, Image, Value

    from silkfire.io import read_records

    rows = read_records(pairs_path)
    return Dataset.from_dict({
        "images": [[str(Path(world) / r["img_path"])] for r in rows],
        "prompt": [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r["prompt"]}]}]
                   for r in rows],
        "chosen": [[{"role": "assistant", "content": [{"type": "text", "text": r["chosen"]}]}] for r in rows],
        "rejected": [[{"role": "assistant", "content": [{"type": "text", "text": r["rejected"]}]}] for r in rows],
    }).cast_column("images", __import__("datasets").Sequence(Image()))


def trl_trainer(model: Any, ref_model: Any, processor: Any, dataset: Any, out: Path, steps: int, batch: int) -> Any:
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(out), per_device_train_batch_size=batch, max_steps=steps, learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant", warmup_steps=0, beta=BETA, loss_type=["sigmoid"], max_length=None,
        bf16=False, use_cpu=True, gradient_checkpointing=False, precompute_ref_log_probs=False, report_to="none",
        save_strategy="no", logging_steps=max(1, steps), dataloader_num_workers=0, disable_tqdm=True, seed=0,
        weight_decay=0.0,
    )
    return DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset, processing_class=processor)


def freeze_tower(model: Any) -> None:
    from silkfire.train.sft import freeze_parts

    freeze_parts(model, ["vision_tower"])


# ---- one side per subprocess -----------------------------------------------------------------------------------
def run_ours(inputs: dict[str, str], steps: int, batch: int, threads: int, out: Path) -> dict[str, Any]:
    from silkfire.train.dpo import DPOConfig, train_dpo

    config = DPOConfig(beta=BETA, rpo_alpha=0.0, learning_rate=LEARNING_RATE, max_steps=steps, batch_size=batch,
                       warmup_ratio=0.0, lr_scheduler="constant", weight_decay=0.0, eval_fraction=0.0,
                       logging_steps=max(1, steps), save_steps=0, num_threads=threads, progress=False,
                       freeze=("vision_tower",))
    result = train_dpo(inputs["start"], Path(inputs["pairs"]), Path(inputs["world"]), config, out)
    m = result.metrics
    pairs = steps * batch
    return {"train_seconds": m["train_seconds"], "reference_seconds": m["reference_seconds"],
            "setup_seconds": m["encode_seconds"], "pairs": pairs, "pairs_per_second": pairs / m["train_seconds"],
            "pairs_per_second_with_reference": pairs / (m["train_seconds"] + m["reference_seconds"]),
            "pairs_per_second_end_to_end": pairs / (m["train_seconds"] + m["reference_seconds"] + m["encode_seconds"]),
            "final_loss": m["loss"]}


def run_trl(inputs: dict[str, str], steps: int, batch: int, threads: int, out: Path) -> dict[str, Any]:
    import torch

    from silkfire.models.loading import load_vlm

    torch.set_num_threads(threads)
    model, processor = load_vlm(inputs["start"])
    freeze_tower(model)
    model.train()
    started = time.perf_counter()  # like ours: data preparation, not model loading
    trainer = trl_trainer(model, None, processor, trl_dataset(inputs["pairs"], inputs["world"]), out, steps, batch)
    setup = time.perf_counter() - started
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    pairs = steps * batch
    return {"train_seconds": seconds, "reference_seconds": 0.0, "setup_seconds": setup, "pairs": pairs,
            "pairs_per_second": pairs / seconds, "pairs_per_second_with_reference": pairs / seconds,
            "pairs_per_second_end_to_end": pairs / (seconds + setup),
            "final_loss": float(output.training_loss)}


def run_loss_check(inputs: dict[str, str], batch: int, threads: int, out: Path) -> dict[str, Any]:
    """Both implementations' loss on the first `batch` pairs, policy != reference, no gradients.

    ``same_tokens``: our log-prob and loss code on TRL's own collated batch (its token ids, completion mask and
    pixels) -- must equal TRL's loss. ``own_encoding``: each side on its own encoding; these differ a little
    because our encoding starts with the tokenizer's <s> (as SFT training and generation do) and TRL's does not.
    """
    import torch
    from torch.utils.data import DataLoader

    from silkfire.io import read_records
    from silkfire.models.loading import load_vlm
    from silkfire.train.dpo import DPOConfig, batch_loss, dpo_loss, encode_pairs, reference_logps, sequence_logps

    torch.set_num_threads(threads)
    policy, processor = load_vlm(inputs["policy"])
    reference, _ = load_vlm(inputs["start"])
    pad = processor.tokenizer.pad_token_id
    pairs = read_records(inputs["pairs"])[:batch]
    data, _ = encode_pairs(pairs, processor, Path(inputs["world"]), max_length=10_000, progress=False)
    data.ref_chosen, data.ref_rejected = reference_logps(reference, data, pad, batch, progress=False)
    with torch.no_grad():
        ours_own, _ = batch_loss(policy.eval(), data, list(range(len(data))), pad,
                                 DPOConfig(beta=BETA, rpo_alpha=0.0, progress=False))
    dataset = trl_dataset(inputs["pairs"], inputs["world"]).select(range(batch))
    trainer = trl_trainer(policy, reference, processor, dataset, out, 1, batch)
    loader = DataLoader(trainer.train_dataset, batch_size=batch, shuffle=False, collate_fn=trainer.data_collator)
    trl_batch = next(iter(loader))
    policy.eval()
    reference.eval()
    with torch.no_grad():
        theirs = float(trainer.compute_loss(policy, trl_batch))
        same = {"input_ids": trl_batch["input_ids"], "attention_mask": trl_batch["attention_mask"],
                "pixel_values": trl_batch["pixel_values"],
                "labels": trl_batch["input_ids"].masked_fill(trl_batch["completion_mask"] == 0, -100)}
        policy_logps, _ = sequence_logps(policy, same)
        reference_lp, _ = sequence_logps(reference, same)
        n = len(policy_logps) // 2
        losses, _, _ = dpo_loss(policy_logps[:n], policy_logps[n:], reference_lp[:n], reference_lp[n:], BETA)
    ours_same = float(losses.mean())
    return {"ours": ours_same, "trl": theirs, "abs_diff": abs(ours_same - theirs), "ours_own_encoding": float(ours_own),
            "own_encoding_diff": abs(float(ours_own) - theirs), "pairs": len(data)}


# ---- driver ----------------------------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    inputs = json.loads(Path(args.inputs).read_text())
    out = Path(args.workdir) / args.side
    if args.side == "ours":
        result = run_ours(inputs, args.steps, args.batch, args.threads, out)
    elif args.side == "trl":
        result = run_trl(inputs, args.steps, args.batch, args.threads, out)
    else:
        result = run_loss_check(inputs, args.batch, args.threads, out)
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)


def spawn(side: str, args: argparse.Namespace, inputs_file: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--side", side, "--inputs", str(inputs_file), "--workdir", args.workdir,
               "--steps", str(args.steps), "--batch", str(args.batch), "--threads", str(args.threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(args.threads)}
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        raise SystemExit(f"{side} failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def median_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    import statistics

    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def table(ours: dict[str, Any], trl: dict[str, Any], loss: dict[str, Any], args: argparse.Namespace) -> str:
    rows = [
        ("pairs/s (training steps)", "pairs_per_second", "{:.2f}"),
        ("pairs/s (incl. reference pass)", "pairs_per_second_with_reference", "{:.2f}"),
        ("pairs/s end to end (data prep + reference + training)", "pairs_per_second_end_to_end", "{:.2f}"),
        ("training seconds", "train_seconds", "{:.1f}"),
        ("reference pass seconds", "reference_seconds", "{:.1f}"),
        ("setup seconds (encode / dataset)", "setup_seconds", "{:.1f}"),
        ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
        ("final train loss", "final_loss", "{:.4f}"),
    ]
    lines = [f"DPO on tiny_llava: {args.steps} steps x {args.batch} pairs, {args.threads} thread(s), beta {BETA}, "
             f"median of {args.repeats} alternating run(s) per side",
             f"| metric | silkfire | TRL {__import__('trl').__version__} | ratio |", "|---|---:|---:|---:|"]
    for name, key, fmt in rows:
        ratio = ours[key] / trl[key] if trl.get(key) else float("nan")
        lines.append(f"| {name} | {fmt.format(ours[key])} | {fmt.format(trl[key])} | {ratio:.2f} |")
    lines.append(f"| loss, same batch and tokens ({loss['pairs']} pairs, policy != ref) | {loss['ours']:.6f} | "
                 f"{loss['trl']:.6f} | diff {loss['abs_diff']:.1e} |")
    lines.append(f"| loss, each side's own encoding (ours adds <s>) | {loss['ours_own_encoding']:.6f} | "
                 f"{loss['trl']:.6f} | diff {loss['own_encoding_diff']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=96)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per side (medians reported)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--side", choices=("ours", "trl", "loss"), help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="dpo-bench-") as work:
        args.workdir = work
        inputs = prepare(Path(work), max(args.pairs, args.steps * args.batch))
        inputs_file = Path(work) / "inputs.json"
        inputs_file.write_text(json.dumps(inputs))
        # alternate the sides (ours, trl, ours, trl, ...) so a change in machine load hits both; keep medians
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "trl": []}
        for _ in range(args.repeats):
            for side in runs:
                runs[side].append(spawn(side, args, inputs_file))
        results = {side: median_of(values) for side, values in runs.items()}
        results["loss"] = spawn("loss", args, inputs_file)
        results["repeats"] = runs  # type: ignore[assignment]
    text = table(results["ours"], results["trl"], results["loss"], args)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), **results}, indent=2))


if __name__ == "__main__":
    main()
