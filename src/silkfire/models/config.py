"""Typed model configuration (conf/model/*.yaml): a tiny LLaVA built here, or a pretrained checkpoint."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

DTYPES = ("float32", "bfloat16", "float16")


def to_plain_mapping(cfg: Any, what: str) -> dict[str, Any]:
    """A plain dict from a dict or an OmegaConf DictConfig (resolved), with a clear error otherwise."""
    if cfg is None:
        return {}
    try:  # OmegaConf is optional at this level: only convert when given one
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if not isinstance(cfg, Mapping):
        raise TypeError(f"{what}: expected a mapping, got {type(cfg).__name__}")
    return dict(cfg)


def build_dataclass(cls: type, cfg: Any, what: str) -> Any:
    """Instantiate a (frozen) dataclass from a mapping; unknown keys raise naming the allowed ones."""
    values = to_plain_mapping(cfg, what)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{what}: unknown key(s) {unknown}; allowed keys: {sorted(names)}")
    return cls(**values)


@dataclass(frozen=True)
class VisionTowerConfig:
    """CLIP vision tower: image_size/patch_size fix the number of image tokens ((image/patch)^2)."""

    image_size: int = 48
    patch_size: int = 16
    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 2
    num_heads: int = 4
    # Which hidden state feeds the projector: -1 = last layer (LLaVA uses -2 on its 24-layer tower;
    # on a 2-layer tower -2 would waste the last layer).
    feature_layer: int = -1

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class TextModelConfig:
    """Llama language model; vocab_size comes from the trained tokenizer."""

    hidden_size: int = 256
    intermediate_size: int = 1024
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    max_position_embeddings: int = 256
    tie_word_embeddings: bool = True


@dataclass(frozen=True)
class ModelConfig:
    """What model to start from.

    source: "build" makes a tiny LLaVA here (tokenizer trained on the world's texts); "pretrained" uses
    ``name_or_path`` (a hub name such as llava-hf/llava-1.5-7b-hf, or a local model directory) as is.
    """

    source: Literal["build", "pretrained"] = "build"
    name_or_path: str | None = None
    # What DVC hashes as the starting checkpoint (a dependency of the `base` stage): a local checkpoint folder, so a
    # checkpoint changed in place re-runs `base` and everything after it (see resolve_checkpoint_files)
    checkpoint_files: str | None = None
    dtype: str = "float32"
    vocab_size: int = 512  # upper bound for the BPE tokenizer (build only)
    vision: VisionTowerConfig = field(default_factory=VisionTowerConfig)
    text: TextModelConfig = field(default_factory=TextModelConfig)

    def __post_init__(self) -> None:
        if self.source not in ("build", "pretrained"):
            raise ValueError(f"model.source must be 'build' or 'pretrained', got {self.source!r}")
        if self.source == "pretrained" and not self.name_or_path:
            raise ValueError("model.source is 'pretrained': set model.name_or_path to a hub name or a local directory")
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.vision.image_size % self.vision.patch_size:
            raise ValueError(
                f"model.vision.image_size ({self.vision.image_size}) must be a multiple of patch_size ({self.vision.patch_size})"
            )

    @classmethod
    def from_mapping(cls, cfg: Any) -> ModelConfig:
        values = to_plain_mapping(cfg, "model config")
        if "vision" in values:
            values["vision"] = build_dataclass(VisionTowerConfig, values["vision"], "model.vision")
        if "text" in values:
            values["text"] = build_dataclass(TextModelConfig, values["text"], "model.text")
        return build_dataclass(cls, values, "model config")


def resolve_checkpoint_files(cfg: Any) -> None:
    """Point ``model.checkpoint_files`` (DVC's dependency on the checkpoint) at files that exist, in place.

    A local folder given as ``model.name_or_path`` is its own; a hub name (``llava-hf/llava-1.5-7b-hf``) is not a
    path, so it is replaced by the checkpoint's folder in the local Hugging Face cache when it is there (offline,
    it must be). A checkpoint found nowhere stays as it is: DVC then stops at `base` naming the missing path.
    Called when `silkfire run` / `silkfire params` compose params.yaml.
    """
    model = cfg.get("model") if hasattr(cfg, "get") else None
    if model is None or model.get("source") != "pretrained":
        return
    files, name = model.get("checkpoint_files"), model.get("name_or_path")
    if not files or Path(str(files)).expanduser().exists() or files != name or not name or name.count("/") != 1:
        return
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # pragma: no cover - a transformers dependency
        return
    cached = Path(HF_HUB_CACHE) / f"models--{name.replace('/', '--')}"
    if cached.is_dir():
        model["checkpoint_files"] = str(cached)
