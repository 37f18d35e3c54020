"""GPU proof: both branches at smoke scale on a tiny real-architecture model, then SFT and DPO throughput at a
realistic size, on whatever device ``runtime`` resolves to. Prints one table and writes the raw figures.

    python benchmarks/gpu_check.py                      # a GPU machine: auto = cuda:0, bf16 where it has it
    python benchmarks/gpu_check.py --device cpu --tiny  # the same code path in ~2 minutes on a CPU (tiny sizes)

Phase 1, ``smoke``: every pipeline stage (generate, validate, base, sft, evaluate, register, then the Silkie branch
sample -> annotate -> validate_feedback -> pairs -> dpo -> evaluate_dpo and the FIRE branch dialogues ->
validate_dialogues -> fire_student, fire_teacher -> fire_bench) through the stage runner (``silkfire stage
<name>``'s code: params.yaml, MLflow run, metrics file) in a scratch project, on a tiny checkpoint built in llava-hf's hub layout (CLIP 336 px /
patch 14 -> 576 image tokens, Llama tokenizer, llava-hf chat template; ``model=llava_1_5_7b
model.name_or_path=<folder>``), branch settings shrunk to seconds of work. One row per stage.

Phase 2, ``throughput``: a LLaVA-architecture model built from config with random weights -- ``--size 1.4b``: CLIP
ViT-L/14-336 shapes (24 layers, 1024 wide) + a TinyLlama-1.1B-shaped Llama (22 layers, 2048 wide, GQA 32/4,
vocab 32000), stored in bf16 like a hub checkpoint -- then ``train_sft`` (full fine-tuning, vision tower frozen)
and ``train_dpo`` (LoRA r 64 on the LLM, as conf/silkie) for a few dozen steps on world data. float32 master
weights under bf16 autocast when runtime.dtype resolves to bfloat16. Samples/s are training-loop figures
(``samples_per_second`` / ``pairs_per_second`` of the metrics: model loading, encoding and the reference pass
excluded; those are in the JSON); peak memory is ``torch.cuda.max_memory_allocated`` over the stage (DPO: over
its training loop).

Outputs (``--out``, default reports/gpu_check): ``gpu_check.json`` (machine, settings, every row, the stages'
metrics) and ``gpu_check.md`` (the table). Exit 0 when every stage ran; 1 when one failed (the table says which).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Branch settings shrunk to seconds of work (the default suite's smoke test uses the same sizes).
SMOKE = [
    "experiment=smoke", "pipeline.branches=[silkie,fire]", "quality.data_docs=false", "eval.max_items=32",
    "silkie.sample.max_instructions=8", "silkie.sample.max_new_tokens=8", "silkie.sample.batch_size=16",
    "silkie.sample.progress=false",
    "silkie.dpo.max_steps=2", "silkie.dpo.batch_size=4", "silkie.dpo.save_steps=1", "silkie.dpo.logging_steps=1",
    "silkie.dpo.progress=false", "silkie.dpo.ref_batch_size=16", "silkie.dpo.eval_fraction=0.25",
    "silkie.evaluate.mme_max_items=8", "silkie.evaluate.mmhal_max_items=8", "silkie.evaluate.mmhal_max_new_tokens=6",
    "silkie.evaluate.batch_size=16",
    "world.train_scenes=24", "world.val_scenes=2", "world.test_scenes=8",
    "fire.dialogues.train_questions=16", "fire.dialogues.test_questions=4", "fire.dialogues.progress=false",
    "fire.sft.val_fraction=0.1", "fire.sft.mix_sft=0.25",
    "fire.sft.student.max_steps=2", "fire.sft.student.batch_size=4", "fire.sft.student.max_eval_samples=4",
    "fire.sft.student.progress=false", "fire.sft.teacher.max_steps=2", "fire.sft.teacher.batch_size=4",
    "fire.sft.teacher.max_eval_samples=4", "fire.sft.teacher.progress=false",
    "fire.bench.max_dialogues=3", "fire.bench.fixed_items=3", "fire.bench.max_turns=2",
    "fire.bench.student_max_new_tokens=6", "fire.bench.teacher_max_new_tokens=6", "fire.bench.progress=false",
]

# Model shapes of the throughput phase (vision: CLIPVisionConfig, text: LlamaConfig keys).
SIZES: dict[str, dict[str, Any]] = {
    "1.4b": {"vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                        "num_attention_heads": 16, "projection_dim": 768},
             "text": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
                      "num_attention_heads": 32, "num_key_value_heads": 4, "max_position_embeddings": 4096,
                      "vocab_size": 32000}},
    "0.5b": {"vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                        "num_attention_heads": 12, "projection_dim": 512},
             "text": {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 24,
                      "num_attention_heads": 16, "num_key_value_heads": 16, "max_position_embeddings": 4096,
                      "vocab_size": 32000}},
    "tiny": {"vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                        "num_attention_heads": 2, "projection_dim": 32},
             "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                      "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 4096}},
}
GIB = 1024 ** 3


# ---- measuring ---------------------------------------------------------------------------------------------------
class Meter:
    """Wall seconds and peak GPU memory of a block (synchronised on a GPU)."""

    def __init__(self, runtime: Any):
        self.runtime = runtime
        self.seconds = 0.0
        self.peak: int | None = None

    def __enter__(self) -> Meter:
        import torch

        gc.collect()
        if self.runtime.is_cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.runtime.torch_device())
            torch.cuda.synchronize(self.runtime.torch_device())
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.runtime.is_cuda:
            torch.cuda.synchronize(self.runtime.torch_device())
            self.peak = int(torch.cuda.max_memory_allocated(self.runtime.torch_device()))
        self.seconds = time.perf_counter() - self.started


def row(phase: str, stage: str, runtime: Any, meter: Meter | None, samples_per_second: float | None = None,
        status: str = "ok", **extra: Any) -> dict[str, Any]:
    return {"phase": phase, "stage": stage, "device": runtime.device, "dtype": runtime.dtype,
            "seconds": round(meter.seconds, 2) if meter else None,
            "samples_per_second": round(samples_per_second, 2) if samples_per_second else None,
            "peak_memory_gib": round(meter.peak / GIB, 2) if meter and meter.peak is not None else None,
            "status": status, **extra}


def samples_per_second(stage: str, metrics: dict[str, Any]) -> float | None:
    if stage in ("sft", "fire_student", "fire_teacher"):
        return metrics.get("samples_per_second")
    if stage == "dpo":
        return metrics.get("pairs_per_second")
    return None


# ---- phase 1: both branches at smoke scale -----------------------------------------------------------------------
def smoke(work: Path, runtime_overrides: list[str], runtime: Any, rows: list[dict[str, Any]],
          details: dict[str, Any]) -> None:
    from omegaconf import OmegaConf

    from silkfire.config import compose
    from silkfire.models.testing import make_real_checkpoint
    from silkfire.stages import pipeline_stages
    from silkfire.stages.runner import run_stage

    project = work / "smoke"
    for name in ("conf", "pipelines"):
        shutil.copytree(PROJECT_ROOT / name, project / name)
    shutil.copyfile(PROJECT_ROOT / "dvc.yaml", project / "dvc.yaml")
    checkpoint = make_real_checkpoint("llava", work / "checkpoints" / "llava-hf-tiny")
    overrides = [*SMOKE, "model=llava_1_5_7b", f"model.name_or_path={checkpoint}", *runtime_overrides]
    cfg = compose(overrides, project)
    OmegaConf.save(cfg, project / "params.yaml")
    os.environ["SILKFIRE_ROOT"] = str(project)
    details["smoke_overrides"] = overrides
    for stage in pipeline_stages(list(cfg.pipeline.branches)):
        try:
            with Meter(runtime) as meter:
                metrics = run_stage(stage, project)
        except Exception as error:  # the table says which stage failed and why; the others are not run
            rows.append(row("smoke", stage, runtime, meter, status=f"FAILED: {type(error).__name__}: {error}"[:300]))
            details.setdefault("errors", {})[stage] = traceback.format_exc()
            return
        rows.append(row("smoke", stage, runtime, meter, samples_per_second(stage, metrics)))
        details.setdefault("smoke_metrics", {})[stage] = metrics
        print(f"  smoke {stage}: {meter.seconds:.1f} s", flush=True)


# ---- phase 2: throughput at a realistic size ---------------------------------------------------------------------
def build_model(out: Path, size: str) -> tuple[Path, int]:
    """A LLaVA-1.5-architecture checkpoint of ``size`` with random weights, stored in bf16, with the llava-hf
    processor (336 px, 576 image tokens, Llama tokenizer, chat template) of the tiny hub-layout checkpoint."""
    import torch
    from transformers import AutoProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from silkfire.models.testing import make_llava_hf_checkpoint

    source = make_llava_hf_checkpoint(out / "processor-source")
    processor = AutoProcessor.from_pretrained(source)
    tokenizer = processor.tokenizer
    shape = SIZES[size]
    vision = CLIPVisionConfig(image_size=336, patch_size=14, **shape["vision"])
    text = LlamaConfig(**{"vocab_size": len(tokenizer), **shape["text"]}, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids(
        "<image>"), image_seq_length=576, vision_feature_select_strategy="default", vision_feature_layer=-2,
        projector_hidden_act="gelu", tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).to(torch.bfloat16)  # stored like a hub checkpoint
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    target = out / f"llava-{size}"
    model.save_pretrained(target)
    processor.save_pretrained(target)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    gc.collect()
    return target, parameters


def throughput(work: Path, args: argparse.Namespace, runtime: Any, rows: list[dict[str, Any]],
               details: dict[str, Any]) -> None:
    from silkfire.io import write_jsonl
    from silkfire.models.testing import make_test_world
    from silkfire.policies.instructions import world_instructions
    from silkfire.policies.scripted import ScriptedPolicy
    from silkfire.train.dpo import DPOConfig, train_dpo
    from silkfire.train.sft import SFTConfig, train_sft
    from silkfire.world.config import WorldConfig

    size = "tiny" if args.tiny else args.size
    started = time.perf_counter()
    model_dir, parameters = build_model(work / "models", size)
    details["throughput_model"] = {"size": size, "parameters": parameters, "build_seconds":
                                   round(time.perf_counter() - started, 1), **SIZES[size]}
    print(f"  built llava-{size}: {parameters / 1e6:.1f}M parameters", flush=True)
    world = make_test_world(work / "world", train_scenes=24, val_scenes=2, test_scenes=2)
    device = {"device": runtime.device, "dtype": runtime.dtype,
              "gradient_checkpointing": args.gradient_checkpointing}

    sft = SFTConfig(learning_rate=1e-5, max_steps=args.sft_steps, batch_size=args.sft_batch, warmup_ratio=0.0,
                    lr_scheduler="constant", logging_steps=5, save_steps=10 ** 6, eval_steps=0,
                    eval_batch_size=args.sft_batch, max_eval_samples=args.sft_batch, num_threads=args.threads,
                    freeze=("vision_tower",), progress=False, resume="false", **device)
    try:
        with Meter(runtime) as meter:
            result = train_sft(model_dir, world / "train.jsonl", world / "val.jsonl", world, sft, work / "sft")
        metrics = result.metrics
        rows.append(row("throughput", f"sft llava-{size} (batch {args.sft_batch})", runtime, meter,
                        metrics["samples_per_second"], train_seconds=round(metrics["train_seconds"], 2),
                        steps=metrics["global_step"]))
        details["sft_metrics"] = metrics
    except Exception as error:
        rows.append(row("throughput", f"sft llava-{size}", runtime, None, status=f"FAILED: {error}"[:300]))
        details.setdefault("errors", {})["sft"] = traceback.format_exc()
    print("  sft done", flush=True)
    shutil.rmtree(work / "sft", ignore_errors=True)

    instructions = world_instructions(world, families=["open", "probe", "mme"])
    good = ScriptedPolicy("correct", WorldConfig()).respond(instructions, world, 0)
    pairs = []
    for profile in ("hallucinate", "miscount", "wrong_color"):
        bad = ScriptedPolicy(profile, WorldConfig()).respond(instructions, world, 0)
        pairs += [{"id": f"{i.id}/{profile}", "prompt": i.prompt, "img_path": i.image, "chosen": c, "rejected": r}
                  for i, c, r in zip(instructions, good, bad) if c != r]
    need = args.dpo_steps * args.dpo_batch
    write_jsonl(work / "pairs.jsonl", pairs[:max(need, args.dpo_batch)])
    dpo = DPOConfig.from_mapping(dict(
        learning_rate=1e-5, max_steps=args.dpo_steps, batch_size=args.dpo_batch, warmup_ratio=0.0,
        lr_scheduler="constant", logging_steps=5, save_steps=0, eval_fraction=0.0, ref_batch_size=args.dpo_batch,
        num_threads=args.threads, progress=False, resume="false", **device))  # LoRA r 64 on the LLM: conf default
    try:
        with Meter(runtime) as meter:
            result = train_dpo(model_dir, work / "pairs.jsonl", world, dpo, work / "dpo")
        metrics = result.metrics
        rows.append(row("throughput", f"dpo llava-{size} LoRA (batch {args.dpo_batch} pairs)", runtime, meter,
                        metrics["pairs_per_second"], train_seconds=round(metrics["train_seconds"], 2),
                        reference_seconds=round(metrics["reference_seconds"], 2), steps=metrics["global_step"]))
        details["dpo_metrics"] = metrics
    except Exception as error:
        rows.append(row("throughput", f"dpo llava-{size}", runtime, None, status=f"FAILED: {error}"[:300]))
        details.setdefault("errors", {})["dpo"] = traceback.format_exc()
    print("  dpo done", flush=True)


# ---- report ------------------------------------------------------------------------------------------------------
def table(rows: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        return "-" if value is None else str(value)

    lines = ["| phase | stage | device | dtype | seconds | samples/s | peak GPU memory (GiB) | status |",
             "|---|---|---|---|---:|---:|---:|---|"]
    lines += [f"| {r['phase']} | {r['stage']} | {r['device']} | {r['dtype']} | {cell(r['seconds'])} | "
              f"{cell(r['samples_per_second'])} | {cell(r['peak_memory_gib'])} | {r['status']} |" for r in rows]
    return "\n".join(lines) + "\n"


def machine(runtime: Any) -> dict[str, Any]:
    import accelerate
    import torch
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__,
            "cpu_count": os.cpu_count(), "host": platform.node()}
    if runtime.is_cuda:
        props = torch.cuda.get_device_properties(runtime.torch_device())
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / GIB, 1),
                    compute_capability=f"{props.major}.{props.minor}", gpu_count=torch.cuda.device_count())
    return info


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="runtime.device: auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="auto", help="runtime.dtype: auto | float32 | bfloat16")
    parser.add_argument("--tiny", action="store_true", help="tiny throughput model and few steps (a CPU check)")
    parser.add_argument("--size", choices=[s for s in SIZES if s != "tiny"], default="1.4b",
                        help="throughput model shape (default 1.4b)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="runtime.gradient_checkpointing")
    parser.add_argument("--skip-smoke", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--sft-steps", type=int, default=None, help="default 30 (tiny: 4)")
    parser.add_argument("--sft-batch", type=int, default=None, help="default 8 (tiny: 4)")
    parser.add_argument("--dpo-steps", type=int, default=None, help="default 20 (tiny: 3)")
    parser.add_argument("--dpo-batch", type=int, default=None, help="pairs per step, default 4 (tiny: 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores, max 8)")
    parser.add_argument("--out", type=Path, default=Path("reports/gpu_check"))
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    defaults = {"sft_steps": (30, 4), "sft_batch": (8, 4), "dpo_steps": (20, 3), "dpo_batch": (4, 2)}
    for key, (full, tiny) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, tiny if args.tiny else full)
    args.threads = args.threads or min(8, os.cpu_count() or 1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for key in ("GX_ANALYTICS_ENABLED", "PREFECT_SERVER_ANALYTICS_ENABLED"):
        os.environ.setdefault(key, "false")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the scratch project's own store

    import torch

    from silkfire.runtime import resolve

    runtime = resolve(args.device, args.dtype, args.gradient_checkpointing)  # no GPU for cuda: fails here
    torch.set_num_threads(args.threads)
    runtime_overrides = [f"runtime.device={args.device}", f"runtime.dtype={args.dtype}",
                         f"runtime.gradient_checkpointing={str(args.gradient_checkpointing).lower()}"]
    print(f"gpu_check on {runtime.device} ({runtime.dtype}); {'tiny' if args.tiny else args.size} throughput model",
          flush=True)
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {"machine": machine(runtime), "settings": {k: str(v) for k, v in vars(args).items()},
                               "runtime": runtime.describe()}
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        if not args.skip_smoke:
            smoke(work, runtime_overrides, runtime, rows, details)
        if not args.skip_throughput:
            throughput(work, args, runtime, rows, details)
    finally:
        details["total_seconds"] = round(time.perf_counter() - started, 1)
        args.out.mkdir(parents=True, exist_ok=True)
        text = table(rows)
        header = (f"gpu_check: {details['machine'].get('gpu', 'CPU')} ({runtime.device}, {runtime.dtype}), "
                  f"torch {details['machine']['torch']}, total {details['total_seconds']} s\n\n")
        (args.out / "gpu_check.md").write_text(header + text, encoding="utf-8")
        (args.out / "gpu_check.json").write_text(json.dumps({**details, "rows": rows}, indent=1, default=str),
                                                 encoding="utf-8")
        print("\n" + header + text)
        print(f"raw figures: {args.out / 'gpu_check.json'}")
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if rows and all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
