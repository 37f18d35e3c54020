"""Stage `base`: the model training starts from.

`model.source: build` (tiny_llava): train a tokenizer on the world's text and build a seeded tiny LLaVA into
paths.base_model. `model.source: pretrained` (e.g. llava_1_5_7b): nothing is copied; paths.base_model holds
a `source.json` naming the checkpoint, which `resolve_base` turns back into a hub name or local path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from silkfire.io import write_json

PARAMS = ("seed", "world", "model", "paths.base_model")
SOURCE_FILE = "source.json"


def resolve_base(base_dir: Path) -> str | Path:
    """What load_vlm needs for the base model the `base` stage prepared in `base_dir`."""
    pointer = base_dir / SOURCE_FILE
    if pointer.is_file():
        return json.loads(pointer.read_text(encoding="utf-8"))["name_or_path"]
    return base_dir


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
    if Path(prepared).resolve() != out_dir.resolve():  # a pretrained checkpoint: record where it lives
        write_json(out_dir / SOURCE_FILE, {"name_or_path": str(prepared)})
        return {"source": "pretrained", "parameters": 0}
    return {"source": "build", "parameters": count_parameters(out_dir)}


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
        return "pretrained checkpoint"
    return f"built tiny model, {metrics.get('parameters', 0) / 1e6:.2f}M parameters"
