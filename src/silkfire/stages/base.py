"""Stage `base`: the model training starts from.

`model.source: build` (tiny_llava): train a tokenizer on the world's text and build a seeded tiny LLaVA into
paths.base_model. `model.source: pretrained` (e.g. llava_1_5_7b): nothing is copied; paths.base_model holds
a `source.json` naming the checkpoint, which `resolve_base` turns back into a hub name or local path.

A pretrained checkpoint is checked first: a supported family (silkfire.models.families) with its own processor and
chat template, else the stage fails naming what is supported. It is identified by its content: `source.json`
records the sha256 of its files (DVC also hashes `model.checkpoint_files`, a dependency of this stage), so a
checkpoint rebuilt in place changes models/base and re-runs every stage that starts from it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from silkfire.artefacts import BASE_SOURCE_FILE, resolve_base  # noqa: F401 -- resolve_base re-exported
from silkfire.io import write_json
from silkfire.stages import Dep, Out

PARAMS = ("seed", "world", "model", "paths.base_model")
DEPS = (
    Dep("${model.checkpoint_files}",
        "the checkpoint's files (pretrained): changed in place, base and all after it re-run"),
)
OUTS = (
    Out("${paths.base_model}"),
)
SOURCE_FILE = BASE_SOURCE_FILE


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    from silkfire.models.config import ModelConfig
    from silkfire.models.loading import prepare_base_model
    from silkfire.world import WorldConfig, world_texts

    out_dir = root / cfg.paths.base_model
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model_cfg = ModelConfig.from_mapping(cfg.model)
    texts = world_texts(WorldConfig.from_mapping(cfg.world))
    prepared = prepare_base_model(model_cfg, texts, out_dir, seed=int(cfg.seed))
    if Path(prepared).resolve() != out_dir.resolve():  # a pretrained checkpoint: record where it lives and what
        pointer = {"name_or_path": str(prepared), **identify(prepared)}
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / SOURCE_FILE, pointer)
        return {"source": "pretrained", "family": pointer["family"], "parameters": pointer.get("parameters", 0)}
    return {"source": "build", "parameters": count_parameters(out_dir)}


def identify(source: str | Path) -> dict[str, Any]:
    """Family and content of a pretrained checkpoint: a local folder is checked (family, processor, chat template)
    and hashed file by file; a hub name is checked through its cached config and identified by its cached files."""
    from silkfire.models.families import UnsupportedModel, check_checkpoint, checkpoint_digest, family_for_type

    folder = Path(str(source)).expanduser()
    if folder.is_dir():
        family = check_checkpoint(folder)
        return {"family": family.name, "digest": checkpoint_digest(folder), "parameters": count_parameters(folder)}
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(source), local_files_only=True)
    except OSError as error:
        raise UnsupportedModel(f"{source}: neither a local checkpoint folder nor a hub checkpoint in the local HF "
                               f"cache ({error})") from error
    family = family_for_type(config.model_type, str(source))
    from huggingface_hub import snapshot_download

    snapshot = Path(snapshot_download(str(source), local_files_only=True))
    return {"family": family.name, "digest": checkpoint_digest(snapshot), "snapshot": snapshot.name}


def count_parameters(model_dir: Path) -> int:
    """Number of weights in a model folder's safetensors files (read from headers, no tensors loaded)."""
    from math import prod

    from safetensors import safe_open

    total = 0
    for weights in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(weights), framework="pt") as handle:
            total += sum(prod(handle.get_slice(key).get_shape()) for key in handle.keys())
    return total


def summary(metrics: dict[str, Any]) -> str:
    if metrics.get("source") == "pretrained":
        millions = metrics.get("parameters", 0) / 1e6
        return f"pretrained {metrics.get('family', '')} checkpoint, {millions:.2f}M parameters"
    return f"built tiny model, {metrics.get('parameters', 0) / 1e6:.2f}M parameters"


def check(cfg: DictConfig) -> None:
    """Parse the typed settings this stage reads (silkfire.stages.runner.check_config: before any stage runs)."""
    from silkfire.models.config import ModelConfig

    ModelConfig.from_mapping(cfg.model)
