"""Our SFT (silkfire.train.sft: transformers' Trainer) vs TRL's SFTTrainer vs a plain torch loop, on the same tiny
VLM, records, threads and recipe (issue 16 item 2: "the same for SFT").

    .venv/bin/python benchmarks/sft_vs_trl.py            # defaults: 5 rotated rounds, ~6 min on 2 cores
    .venv/bin/python benchmarks/sft_vs_trl.py --rounds 5 --steps 20 --warmup 2 --batch 16 --threads 2

Needs the bench extra (trl). The protocol is benchmarks/dpo_vs_trl.py's (its clock, load gating and rounds):
* Same inputs: the default tiny_llava model built by the pipeline's builder, the world's training questions with
  plain answers, vision tower frozen, AdamW (no weight decay), constant learning rate, clipping at 1.0, float32,
  random batches (no length grouping on any side), one thread setting for every process.
* Same tokens: our encoder starts each sample with the tokenizer's <s>, TRL's collator does not, so our side's <s>
  is dropped here (``--keep-bos`` keeps it; as in dpo_vs_trl.py). A check process renders the first batch both ways
  (ours: silkfire.train.data's encoder, loss on the answer and its end token; TRL: its prompt-completion collator,
  loss on the completion) and compares ids row by row and the start model's loss on it; the table warns on a
  difference.
* Same clock start: right after each side's model load. Three numbers per side and round: steady-state samples/s
  (after ``--warmup`` steps), end to end (from the clock start: encoding, dataset building and every step), and
  peak RSS growth. MFU: model FLOPs per sample (torch.utils.flop_counter, forward + backward of each check sample
  alone) x steady samples/s against the 2048^3 fp32 matmul peak measured in the check process.
* Sides: ``ours`` (train_sft as the sft stage calls it, eval and checkpoints off), ``plain`` (our encoded batches in
  a bare forward/backward/step loop: the floor of any Trainer-based loop), ``trl`` (SFTTrainer with its defaults).
Prints the table (medians, min-max, ratios per round) and writes the raw rounds to
benchmarks/results/sft_vs_trl-<UTC date-time>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo_vs_trl import ROOT, Clock, environment, run_rounds, spawn, spread  # noqa: E402

LEARNING_RATE = 1e-4
SIDES = ("ours", "plain", "trl")


# ---- inputs -----------------------------------------------------------------------------------------------------
def prepare(work: Path, n_samples: int, seed: int = 0) -> dict[str, str]:
    """World, start model (default tiny_llava) and the training records (plain answers), shuffled once."""
    from omegaconf import OmegaConf

    from silkfire.io import read_records, write_jsonl
    from silkfire.models.config import ModelConfig
    from silkfire.models.testing import make_test_world
    from silkfire.models.tiny_llava import build_tiny_llava
    from silkfire.world.config import WorldConfig
    from silkfire.world.texts import world_texts

    world = make_test_world(work / "world", train_scenes=max(8, n_samples // 12), val_scenes=1, test_scenes=1,
                            seed=seed)
    model_cfg = ModelConfig.from_mapping(OmegaConf.load(ROOT / "conf/model/tiny_llava.yaml"))
    start = build_tiny_llava(model_cfg, world_texts(WorldConfig()), work / "start", seed=seed)
    records = [r for r in read_records(world / "train.jsonl") if isinstance(r.get("answer"), str)]
    random.Random(seed).shuffle(records)
    if len(records) < n_samples:
        raise SystemExit(f"only {len(records)} records; ask for fewer samples")
    write_jsonl(work / "sft.jsonl", records[:n_samples])
    return {"world": str(world), "start": str(start), "records": str(work / "sft.jsonl")}


def trl_dataset(records_path: str, world: str) -> Any:
    """The records in TRL's conversational prompt-completion vision format."""
    from datasets import Dataset, Image, Sequence

    from silkfire.io import read_records

    rows = read_records(records_path)
    return Dataset.from_dict({
        "images": [[str(Path(world) / r["image"])] for r in rows],
        "prompt": [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r["question"]}]}]
                   for r in rows],
        "completion": [[{"role": "assistant", "content": [{"type": "text", "text": str(r["answer"])}]}]
                       for r in rows],
    }).cast_column("images", Sequence(Image()))


def trl_trainer(model: Any, processor: Any, dataset: Any, out: Path, steps: int, batch: int,
                callbacks: list[Any] | None = None) -> Any:
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(out), per_device_train_batch_size=batch, max_steps=steps, learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, bf16=False, use_cpu=True,
        gradient_checkpointing=False, report_to="none", save_strategy="no", logging_steps=max(1, steps),
        dataloader_num_workers=0, disable_tqdm=True, seed=0, max_length=None,
    )
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor, callbacks=callbacks)


def our_config(args: argparse.Namespace, steps: int) -> Any:
    from silkfire.train.sft import SFTConfig

    return SFTConfig(learning_rate=LEARNING_RATE, max_steps=steps, batch_size=args.batch, warmup_ratio=0.0,
                     lr_scheduler="constant", weight_decay=0.0, max_grad_norm=1.0, logging_steps=max(1, steps),
                     save_steps=0, eval_steps=0, max_eval_samples=8, num_threads=args.threads, answer_style="plain",
                     group_by_length=False, freeze=("vision_tower",), seed=0, resume=False, progress=False,
                     dtype="float32", device="cpu")


def patch_encoding(keep_bos: bool) -> None:
    """Our SFT encoder (both its in-memory and on-disk paths), minus the leading <s> (unless ``keep_bos``)."""
    if keep_bos:
        return
    import silkfire.train.data as data

    original = data._SampleEncoder.encode

    def encode(self: Any, conversations: Any) -> Any:
        all_ids, all_labels, image_index = original(self, conversations)
        bos = self.tokenizer.bos_token_id
        for index, ids in enumerate(all_ids):
            if bos is not None and len(ids) and ids[0] == bos:
                all_ids[index], all_labels[index] = ids[1:], all_labels[index][1:]
        return all_ids, all_labels, image_index

    data._SampleEncoder.encode = encode


# ---- the sides, each in its own process ---------------------------------------------------------------------------
def start_clock_after_load(clock: Clock) -> None:
    """The next load_vlm (the side's model load) starts the clock when it returns."""
    import silkfire.models.loading as loading

    load = loading.load_vlm

    def load_then_start(*a: Any, **k: Any) -> Any:
        loaded = load(*a, **k)
        clock.start()
        loading.load_vlm = load
        return loaded

    loading.load_vlm = load_then_start


def run_ours(inputs: dict[str, str], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from silkfire.train.sft import train_sft

    clock = Clock()
    start_clock_after_load(clock)
    records = Path(inputs["records"])

    def callback(event: str, step: int, values: dict[str, Any]) -> None:
        if event == "step":
            clock.step()

    result = train_sft(inputs["start"], records, records, Path(inputs["world"]), our_config(args, args.steps), out,
                       callbacks=[callback])
    return {**clock.result(args.steps, args.batch, args.warmup), "final_loss": result.metrics.get("train_loss")}


def run_plain(inputs: dict[str, str], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader

    from silkfire.io import read_records
    from silkfire.models.loading import load_vlm
    from silkfire.train.data import SFTCollator, encode_sft_records
    from silkfire.train.sft import freeze_parts

    model, processor = load_vlm(inputs["start"], dtype="float32", device="cpu")
    clock = Clock()
    clock.start()
    data = encode_sft_records(read_records(inputs["records"]), processor, Path(inputs["world"]), progress=False)
    freeze_parts(model, ["vision_tower"])
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LEARNING_RATE, weight_decay=0.0, fused=True)
    loader = DataLoader(data, batch_size=args.batch, shuffle=True, generator=torch.Generator().manual_seed(0),
                        collate_fn=SFTCollator(processor.tokenizer.pad_token_id, processor.image_token_id))
    batches = iter(loader)
    loss = None
    for _ in range(args.steps):
        batch = next(batches)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.step()
    return {**clock.result(args.steps, args.batch, args.warmup), "final_loss": float(loss) if loss is not None else None}


def run_trl(inputs: dict[str, str], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from transformers import TrainerCallback

    from silkfire.models.loading import load_vlm
    from silkfire.train.sft import freeze_parts

    model, processor = load_vlm(inputs["start"], dtype="float32", device="cpu")
    clock = Clock()
    clock.start()
    freeze_parts(model, ["vision_tower"])
    model.train()

    class StepEnds(TrainerCallback):
        def on_step_end(self, *a: Any, **k: Any) -> None:
            clock.step()

    trainer = trl_trainer(model, processor, trl_dataset(inputs["records"], inputs["world"]), out, args.steps,
                          args.batch, callbacks=[StepEnds()])
    output = trainer.train()
    return {**clock.result(args.steps, args.batch, args.warmup), "final_loss": float(output.training_loss)}


def run_check(inputs: dict[str, str], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The first batch both ways (ids, answer tokens, loss of the start model); FLOPs per sample; matmul peak."""
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.flop_counter import FlopCounterMode

    from silkfire.io import read_records
    from silkfire.models.loading import load_vlm
    from silkfire.train.data import SFTCollator, encode_sft_records
    from silkfire.train.sft import freeze_parts

    model, processor = load_vlm(inputs["start"], dtype="float32", device="cpu")
    records = read_records(inputs["records"])[:args.batch]
    data = encode_sft_records(records, processor, Path(inputs["world"]), progress=False)
    collate = SFTCollator(processor.tokenizer.pad_token_id, processor.image_token_id)
    ours = collate([data[i] for i in range(len(data))])
    trainer = trl_trainer(model, processor, trl_dataset(inputs["records"], inputs["world"]).select(range(args.batch)),
                          out, 1, args.batch)
    loader = DataLoader(trainer.train_dataset, batch_size=args.batch, shuffle=False, collate_fn=trainer.data_collator)
    theirs = next(iter(loader))
    mismatches = []
    for row in range(len(data)):
        our_ids = ours["input_ids"][row][ours["attention_mask"][row].bool()].tolist()
        our_answer = ours["input_ids"][row][ours["labels"][row] != -100].tolist()
        trl_ids = theirs["input_ids"][row][theirs["attention_mask"][row].bool()].tolist()
        trl_labels = theirs.get("labels")
        trl_answer = theirs["input_ids"][row][trl_labels[row] != -100].tolist() if trl_labels is not None else None
        if our_ids != trl_ids or our_answer != trl_answer:
            mismatches.append({"row": row, "ours": our_ids, "trl": trl_ids, "ours_answer": our_answer,
                               "trl_answer": trl_answer})
    model.eval()
    with torch.no_grad():
        our_loss = float(model(**ours).loss)
        trl_loss = float(trainer.compute_loss(model, theirs))

    freeze_parts(model, ["vision_tower"])
    model.train()
    counter = FlopCounterMode(display=False)
    with counter:
        for row in range(len(data)):
            single = collate([data[row]])
            model(**single).loss.backward()
    tokens = sum(len(data[i]["input_ids"]) for i in range(len(data)))
    positions = int(ours["input_ids"].numel())

    size = args.matmul_size
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        torch.mm(a, b)
    times = []
    for _ in range(args.matmul_repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - started)
    return {
        "tokens_identical": not mismatches, "token_mismatches": mismatches[:3], "rows": len(data),
        "loss_ours": our_loss, "loss_trl": trl_loss, "loss_diff": abs(our_loss - trl_loss),
        "model_flops_per_sample": counter.get_total_flops() / len(data), "tokens_per_sample": tokens / len(data),
        "padding_share_first_batch": 1 - tokens / positions,
        "flops_method": "torch.utils.flop_counter over forward+backward of each check sample alone, vision tower "
                        "frozen",
        "matmul": {"size": size, "seconds": times, "peak_flops": 2 * size ** 3 / min(times)},
    }


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    import datasets  # noqa: F401  (every side imports the same modules before its model load)
    import psutil  # noqa: F401
    from trl import SFTConfig, SFTTrainer  # noqa: F401

    import silkfire.models.loading  # noqa: F401
    import silkfire.train.sft  # noqa: F401

    patch_encoding(args.keep_bos)
    inputs = json.loads(Path(args.inputs).read_text())
    out = Path(args.workdir) / f"{args.variant}-{os.getpid()}"
    runner = {"check": run_check, "ours": run_ours, "plain": run_plain, "trl": run_trl}[args.variant]
    result = runner(inputs, args, out)
    result["threads"] = torch.get_num_threads()
    print("RESULT " + json.dumps(result), flush=True)


# ---- driver -----------------------------------------------------------------------------------------------------
METRICS = {
    "steady_pairs_per_second": "(1) steady-state training, samples/s",
    "end_to_end_pairs_per_second": "(2) end to end incl. data preparation, samples/s",
    "peak_rss_growth_mb": "(3) peak RSS growth after load, MB",
    "mfu_percent": "    MFU, % of the fp32 matmul peak (steady)",
}


def summarize(rounds: list[dict[str, Any]], check: dict[str, Any]) -> dict[str, Any]:
    use = [r for r in rounds if not r["refused"]] or rounds
    for r in rounds:
        for result in r["results"].values():
            result["mfu_percent"] = (100 * check["model_flops_per_sample"] * result["steady_pairs_per_second"]
                                     / check["matmul"]["peak_flops"])
    return {
        "rounds_used": [r["round"] for r in use], "all_rounds_refused": all(r["refused"] for r in rounds),
        "values": {side: {key: spread([r["results"][side][key] for r in use]) for key in METRICS} for side in SIDES},
        "ratios_over_trl": {side: {key: spread([r["results"][side][key] / r["results"]["trl"][key] for r in use])
                                   for key in METRICS} for side in ("ours", "plain")},
        "ours_over_plain": {key: spread([r["results"]["ours"][key] / r["results"]["plain"][key] for r in use])
                            for key in METRICS},
    }


def table(summary: dict[str, Any], check: dict[str, Any], meta: dict[str, Any]) -> str:
    def cell(s: dict[str, float]) -> str:
        return f"{s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}]"

    lines = [f"SFT: ours vs plain loop vs TRL {meta['versions']['trl']} SFTTrainer; {meta['cpu_model']}, "
             f"{meta['threads']} threads, commit {meta['git_commit'][:12]}, rounds {summary['rounds_used']}",
             f"tokens identical: {check['tokens_identical']}; first-batch loss ours {check['loss_ours']:.6f} vs TRL "
             f"{check['loss_trl']:.6f}; padding in a random batch {check['padding_share_first_batch']:.0%}",
             "", f"| {'':52} | ours | plain loop | TRL | ours/TRL | plain/TRL | ours/plain |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for key, label in METRICS.items():
        values = summary["values"]
        lines.append(f"| {label:52} | {cell(values['ours'][key])} | {cell(values['plain'][key])} | "
                     f"{cell(values['trl'][key])} | {cell(summary['ratios_over_trl']['ours'][key])} | "
                     f"{cell(summary['ratios_over_trl']['plain'][key])} | {cell(summary['ours_over_plain'][key])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=640, help="records in the data (>= steps x batch)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-load", type=float, default=1.5, help="refuse a round that starts above this load")
    parser.add_argument("--settle", type=float, default=30.0)
    parser.add_argument("--keep-bos", action="store_true", help="keep our <s> (then the tokens differ from TRL's)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--matmul-repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="default: benchmarks/results/sft_vs_trl-<UTC date-time>.json")
    parser.add_argument("--variant", choices=(*SIDES, "check"), help=argparse.SUPPRESS)
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
    with tempfile.TemporaryDirectory(prefix="sft-bench-") as work:
        args.workdir = work
        inputs = prepare(Path(work), max(args.samples, args.steps * args.batch))
        inputs_file = Path(work) / "inputs.json"
        inputs_file.write_text(json.dumps(inputs))
        check = spawn("check", args, inputs_file, __file__)
        print(f"tokens identical: {check['tokens_identical']}; first-batch loss ours {check['loss_ours']:.6f} vs "
              f"TRL {check['loss_trl']:.6f}", flush=True)
        if not check["tokens_identical"] or check["loss_diff"] > 1e-4:
            print("WARNING: the sides do not see the same tokens / compute the same loss (see 'check' in the JSON)",
                  flush=True)
        rounds = run_rounds(args, inputs_file, SIDES, __file__, unit="samples/s")
    meta["wall_seconds"] = time.perf_counter() - started
    summary = summarize(rounds, check)
    text = table(summary, check, meta)
    print(text)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    path = Path(args.json) if args.json else ROOT / "benchmarks" / "results" / f"sft_vs_trl-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"args": {k: v for k, v in vars(args).items() if k not in ("variant", "inputs", "workdir")},
              **meta, "check": check, "summary": summary, "rounds": rounds, "table": text}
    path.write_text(json.dumps(record, indent=2))
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
