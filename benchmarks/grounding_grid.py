"""Grid of SFT recipes for the tiny VLM: does (and when does) it learn to read the image? (docs/grounding.md)

    .venv/bin/python benchmarks/grounding_grid.py --out /tmp/grid                      # the built-in grid
    .venv/bin/python benchmarks/grounding_grid.py --out /tmp/grid --recipes my.jsonl   # one JSON recipe per line
    .venv/bin/python benchmarks/grounding_grid.py --out /tmp/grid --only lr3e-4_b128_tps1_explained --threads 2

Prepares the default world and base model once (from params.yaml, under ``--out``), then trains every recipe in
its own process (all at once: on one GPU that is fast; on 2 CPU cores use ``--only``). Each recipe is a plain
AdamW loop over the pipeline's own data encoding (silkfire.train.data), with a forced-choice Yes/No score of the
MME-style *validation* set (``mme_val.jsonl``, the val scenes: recipes are chosen here, so the test set stays
unbiased) at the listed steps (silkfire.eval.mme.score_mme): per-category score and the total, chance ~450 of
1200 (6 subtasks). Results go to ``<out>/results.jsonl`` (one line per recipe and step) and a table is printed at
the end.

Recipe keys: name, lr, bs, tps (turns per sample), steps, eval_at, answer_style (plain|explained), families,
categories, phases ([{steps, families}] run in order), text (LM overrides: hidden_size, intermediate_size,
num_layers), train_vision, seed, wall (seconds before a final evaluation and stop).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

GRID = [
    {"name": "lr1e-3_b16_tps8_plain (old default)", "lr": 1e-3, "bs": 16, "tps": 8, "answer_style": "plain"},
    {"name": "lr3e-4_b32_tps8_plain", "lr": 3e-4, "bs": 32, "tps": 8, "answer_style": "plain"},
    {"name": "lr3e-4_b32_tps8_explained", "lr": 3e-4, "bs": 32, "tps": 8},
    {"name": "lr3e-4_b128_tps1_plain", "lr": 3e-4, "bs": 128, "tps": 1, "answer_style": "plain"},
    {"name": "lr3e-4_b128_tps1_explained", "lr": 3e-4, "bs": 128, "tps": 1},
    {"name": "curriculum_open_first", "lr": 3e-4, "bs": 32, "tps": 8, "answer_style": "plain",
     "phases": [{"steps": 1000, "families": ["open", "probe"]}, {"steps": 3000}]},
    {"name": "existence_only", "lr": 3e-4, "bs": 32, "tps": 8, "answer_style": "plain", "families": ["mme"],
     "categories": ["existence"]},
    {"name": "lm256", "lr": 3e-4, "bs": 128, "tps": 1, "text": {"hidden_size": 256, "intermediate_size": 1024}},
]
DEFAULT_EVAL_AT = [250, 500, 750, 1000, 1250, 1500, 2000, 3000, 4000]


def prepare(out: Path, text: dict[str, Any] | None = None, seed: int = 0) -> tuple[Path, Path]:
    """The default world and a base model (LM overrides in ``text``, initialised with ``seed`` as the pipeline's
    ``base`` stage does with the global seed) under ``out``, built once."""
    import yaml

    from silkfire.models.config import ModelConfig
    from silkfire.models.loading import prepare_base_model
    from silkfire.world import WorldConfig, generate_world, world_texts

    params = yaml.safe_load(Path("params.yaml").read_text())
    world = out / "world"
    if not (world / "manifest.json").exists():
        generate_world(WorldConfig.from_mapping(params["world"]), world, progress=False)
    model_cfg = copy.deepcopy(params["model"])
    model_cfg["text"].update(text or {})
    key = f"base_seed{seed}" + "".join(f"_{k}{v}" for k, v in sorted((text or {}).items()))
    base = out / key
    if not (base / "config.json").exists():
        texts = world_texts(WorldConfig.from_mapping(params["world"]))
        prepare_base_model(ModelConfig.from_mapping(model_cfg), texts, base, seed=seed)
    return world, base


def selection_records(world: Path) -> list[dict[str, Any]]:
    """The questions recipes are ranked on: the val scenes' MME-style set (the test set is never read here)."""
    from silkfire.io import read_records

    return read_records(world / "mme_val.jsonl")


def train_recipe(recipe: dict[str, Any], out: Path, threads: int) -> None:
    """One recipe, start to end (run in its own process)."""
    import random

    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from silkfire.eval.mme import WORLD_CATEGORY_GROUPS, score_mme
    from silkfire.io import read_records
    from silkfire.train.data import SFTCollator, encode_sft_records, select_records, styled_answers

    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    seed = int(recipe.get("seed", 0))
    torch.manual_seed(seed)
    random.seed(seed)
    world, base = prepare(out, recipe.get("text"), seed)
    processor = AutoProcessor.from_pretrained(base)
    model = LlavaForConditionalGeneration.from_pretrained(base).to(device)
    for parameter in model.model.vision_tower.parameters():
        parameter.requires_grad = bool(recipe.get("train_vision", False))
    style = recipe.get("answer_style", "explained")
    train_records = read_records(world / "train.jsonl")

    def encoded(families: list[str] | None, categories: list[str] | None) -> Any:
        kept = [r for r in train_records if (families is None or r["family"] in families)
                and (categories is None or r["category"] in categories)]
        kept = styled_answers(select_records(kept, None, None, seed), style)
        return encode_sft_records(kept, processor, world, progress=False, turns_per_sample=int(recipe.get("tps", 1)),
                                  seed=seed)

    collate = SFTCollator(processor.tokenizer.pad_token_id)
    phases = recipe.get("phases") or [{"steps": recipe.get("steps", 4000), "families": recipe.get("families"),
                                       "categories": recipe.get("categories")}]
    total = sum(int(phase["steps"]) for phase in phases)
    batch, lr = int(recipe.get("bs", 128)), float(recipe.get("lr", 3e-4))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0, fused=device == "cuda")
    warmup = max(1, int(0.05 * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))

    # Forced choice on the MME-style set: the logit of the first answer token, "Yes" vs "No".
    mme = selection_records(world)
    mme_data = encode_sft_records(mme, processor, world, progress=False)
    first = [int((labels != -100).nonzero()[0]) for labels in mme_data.labels]
    answer_token = [int(mme_data.input_ids[i][first[i]]) for i in range(len(mme))]
    yes_id = next(tok for tok, r in zip(answer_token, mme) if r["answer"] == "Yes")
    no_id = next(tok for tok, r in zip(answer_token, mme) if r["answer"] == "No")
    started = time.time()
    deadline = started + float(recipe.get("wall", math.inf))

    @torch.no_grad()
    def evaluate(step: int) -> None:
        model.eval()
        predictions = []
        for start in range(0, len(mme_data), 256):
            indices = list(range(start, min(start + 256, len(mme_data))))
            inputs = {k: v.to(device) for k, v in collate([mme_data[j] for j in indices]).items() if k != "labels"}
            logits = model(**inputs).logits
            for row, j in enumerate(indices):
                predictions.append("Yes" if logits[row, first[j] - 1, yes_id] > logits[row, first[j] - 1, no_id]
                                   else "No")
        scored = score_mme([record | {"prediction": said} for record, said in zip(mme, predictions)],
                           WORLD_CATEGORY_GROUPS)
        scores = {category: round(values["score"], 1) for category, values in scored["subtasks"].items()}
        row = {"name": recipe["name"], "step": step, "samples": step * batch, "total": round(sum(scores.values()), 1),
               "scores": scores, "seconds": round(time.time() - started)}
        with open(out / "results.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        model.train()

    eval_at = set(recipe.get("eval_at", DEFAULT_EVAL_AT))
    step = 0
    model.train()
    for phase in phases:
        data = encoded(phase.get("families"), phase.get("categories"))
        generator = torch.Generator().manual_seed(seed + step)
        for _ in range(int(phase["steps"])):
            indices = torch.randint(len(data), (batch,), generator=generator).tolist()
            inputs = {k: v.to(device) for k, v in collate([data[j] for j in indices]).items()}
            model(**inputs).loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step in eval_at or step == total or time.time() > deadline:
                evaluate(step)
                if time.time() > deadline:
                    return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recipes", type=Path, help="JSON lines, one recipe each (default: the built-in grid)")
    parser.add_argument("--only", help="run only the recipe of this name")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per recipe process")
    parser.add_argument("--recipe-json", help=argparse.SUPPRESS)  # a worker process
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.recipe_json:
        train_recipe(json.loads(args.recipe_json), args.out, args.threads)
        return 0
    recipes = ([json.loads(line) for line in args.recipes.read_text().splitlines() if line.strip()]
               if args.recipes else GRID)
    if args.only:
        recipes = [r for r in recipes if r["name"] == args.only]
        if not recipes:
            parser.error(f"no recipe named {args.only!r}")
    for text, seed in {(json.dumps(r.get("text") or {}, sort_keys=True), int(r.get("seed", 0))) for r in recipes}:
        prepare(args.out, json.loads(text), seed)  # once, before the workers race for it
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    workers = [subprocess.Popen([sys.executable, __file__, "--out", str(args.out), "--threads", str(args.threads),
                                 "--recipe-json", json.dumps(recipe)], env=env) for recipe in recipes]
    failed = sum(worker.wait() != 0 for worker in workers)
    rows: dict[str, list[dict[str, Any]]] = {}
    results = args.out / "results.jsonl"
    for line in results.read_text().splitlines() if results.exists() else []:
        row = json.loads(line)
        rows.setdefault(row["name"], []).append(row)
    for name, series in rows.items():
        print(f"{name:40s} " + " ".join(f"{r['step']}:{r['total']:.0f}" for r in sorted(series, key=lambda r: r["step"])))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
