"""The VLM families Silkfire trains and evaluates, and what differs between them.

Every family is a transformers-native architecture loaded through ``AutoModelForImageTextToText`` /
``AutoProcessor`` (no remote code). What the pipeline needs to know per family is small and lives here:

- where its parts are (``freeze: [vision_tower, projector, language_model]`` names the same thing in every family),
- which layers LoRA adapts by default (``lora.target_modules: auto``),
- how its processor is loaded on a machine without torchvision (Qwen2-VL's processor insists on a video processor).

Everything else is read from the checkpoint itself: prompts are rendered by the processor's chat template, images
are prepared by its image processor at its own resolution (576 tokens for LLaVA-1.5's CLIP-336, a per-image count
for LLaVA-NeXT's anyres tiles and Qwen2-VL's dynamic resolution), and the answer's end-of-turn token comes from the
tokenizer (:mod:`silkfire.train.data`).

A folder that is not one of these families, or that lacks a processor (image processor, tokenizer, chat template),
is refused with :class:`UnsupportedModel` naming what is supported.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Linear layers of a Llama/Qwen2 decoder block: Silkie's LoRA covered attention and MLP of Qwen-VL's LLM (c_attn,
# attn.c_proj, w1, w2); these are the same layers in the transformers-native families.
DECODER_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
AUTO = "auto"


class UnsupportedModel(ValueError):
    """A checkpoint of an architecture (or a folder layout) Silkfire cannot train; the message names the supported."""


@dataclass(frozen=True)
class Family:
    """One VLM family: its config ``model_type``s and where its parts live (dotted paths from the top model)."""

    name: str
    label: str
    model_types: tuple[str, ...]
    parts: Mapping[str, tuple[str, ...]]
    lora_targets: tuple[str, ...] = DECODER_LINEAR
    lora_within: str = "language_model"
    example: str = ""
    # Qwen2-VL processors need a video processor, which needs torchvision; image-only training does not
    image_only_processor: str | None = None
    # LLaVA-1.5 trained on images padded to a square of the mean colour (expand2square); llava-hf ships a CLIP
    # image processor that centre-crops instead, cutting the sides of every non-square image
    pad_to_square: bool = False
    notes: tuple[str, ...] = field(default=())


FAMILIES: dict[str, Family] = {
    family.name: family for family in (
        Family(
            name="llava", label="LLaVA-1.5 (llava-hf layout)", model_types=("llava",),
            parts={"vision_tower": ("model.vision_tower",), "projector": ("model.multi_modal_projector",),
                   "language_model": ("model.language_model",)},
            example="llava-hf/llava-1.5-7b-hf", pad_to_square=True,
        ),
        Family(
            name="llava_next", label="LLaVA-NeXT (anyres, llava-hf layout)", model_types=("llava_next",),
            parts={"vision_tower": ("model.vision_tower",),
                   "projector": ("model.multi_modal_projector", "model.image_newline"),
                   "language_model": ("model.language_model",)},
            example="llava-hf/llama3-llava-next-8b-hf",
        ),
        Family(
            name="qwen2_vl", label="Qwen2-VL", model_types=("qwen2_vl",),
            # the merger (2x2 patch merge + MLP) is Qwen2-VL's projector; the ViT proper is the rest of `visual`
            parts={"vision_tower": ("model.visual.patch_embed", "model.visual.blocks"),
                   "projector": ("model.visual.merger",), "language_model": ("model.language_model",)},
            example="Qwen/Qwen2-VL-7B-Instruct", image_only_processor="Qwen2VLProcessor",
        ),
        Family(
            name="qwen2_5_vl", label="Qwen2.5-VL", model_types=("qwen2_5_vl",),
            parts={"vision_tower": ("model.visual.patch_embed", "model.visual.blocks"),
                   "projector": ("model.visual.merger",), "language_model": ("model.language_model",)},
            example="Qwen/Qwen2.5-VL-7B-Instruct", image_only_processor="Qwen2_5_VLProcessor",
        ),
    )
}
PARTS = ("vision_tower", "projector", "language_model")


def supported() -> str:
    """One line naming every supported family, its config model_type and a hub example."""
    return "; ".join(f"{f.label} (model_type {'/'.join(f.model_types)}, e.g. {f.example})" for f in FAMILIES.values())


def family_for_type(model_type: str | None, what: str = "model") -> Family:
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    raise UnsupportedModel(f"{what}: architecture model_type={model_type!r} is not supported; supported: "
                           f"{supported()}")


def family_of(model: Any) -> Family:
    """The family of a loaded model (a PEFT wrapper is looked through)."""
    config = getattr(model, "config", None)
    if config is None and hasattr(model, "get_base_model"):
        config = model.get_base_model().config
    return family_for_type(getattr(config, "model_type", None), type(model).__name__)


def part_modules(model: Any, part: str) -> list[Any]:
    """The modules (or parameters) that make up ``part`` (vision_tower | projector | language_model) of ``model``."""
    if part not in PARTS:
        raise ValueError(f"unknown model part {part!r}; parts: {list(PARTS)}")
    found = []
    for path in family_of(model).parts[part]:
        try:
            found.append(model.get_submodule(path))
        except AttributeError:
            found.append(model.get_parameter(path))  # e.g. LLaVA-NeXT's image_newline
    return found


def part_parameters(model: Any, part: str) -> list[Any]:
    params = []
    for item in part_modules(model, part):
        params.extend(item.parameters() if hasattr(item, "parameters") else [item])
    return params


def lora_defaults(model: Any) -> tuple[tuple[str, ...], str]:
    """(target module names, path component they must be inside) for ``lora.target_modules: auto``."""
    family = family_of(model)
    return family.lora_targets, family.lora_within


def context_length(model: Any) -> int:
    """The language model's context size (max_position_embeddings of its text config)."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(getattr(text, "max_position_embeddings"))


# ---- checkpoints on disk --------------------------------------------------------------------------------------------
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def check_checkpoint(path: str | Path) -> Family:
    """The family of a local checkpoint folder, or :class:`UnsupportedModel` saying what is missing or unsupported.

    A usable folder holds ``config.json`` of a supported architecture, safetensors weights, an image processor
    (``preprocessor_config.json`` or ``processor_config.json``), a tokenizer and a chat template (its own file or in
    ``tokenizer_config.json``): prompts are rendered by that template, never by a hand-made format.
    """
    folder = Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UnsupportedModel(f"{folder}: no config.json -- not a model folder (expected save_pretrained's layout "
                               f"of one of: {supported()})")
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as error:
        raise UnsupportedModel(f"{config_file}: unreadable ({error})") from error
    family = family_for_type(model_type, str(folder))
    missing = []
    if not any(folder.glob("*.safetensors")):
        missing.append("safetensors weights (*.safetensors)")
    if not any((folder / name).is_file() for name in PROCESSOR_FILES):
        missing.append(f"an image processor ({' or '.join(PROCESSOR_FILES)})")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"a tokenizer ({' or '.join(TOKENIZER_FILES)})")
    if not any((folder / name).is_file() for name in TEMPLATE_FILES) and not _template_in_tokenizer_config(folder):
        missing.append(f"a chat template ({' or '.join(TEMPLATE_FILES)}, or chat_template in tokenizer_config.json)")
    if missing:
        raise UnsupportedModel(f"{folder}: a {family.label} checkpoint without {', '.join(missing)}; Silkfire needs "
                               "the model's own processor and chat template (save the processor with "
                               "save_pretrained next to the model)")
    return family


def _template_in_tokenizer_config(folder: Path) -> bool:
    path = folder / "tokenizer_config.json"
    try:
        return bool(json.loads(path.read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError):
        return False


def checkpoint_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """Content digest of a checkpoint folder: sha256 over every file's relative path and bytes (sorted), so a
    checkpoint rebuilt in place -- weights, tokenizer, template or processor -- gets a new identity."""
    folder = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


# ---- processors --------------------------------------------------------------------------------------------------
def load_processor(source: str, **kwargs: Any) -> Any:
    """``AutoProcessor.from_pretrained(source, **kwargs)``; for Qwen2-VL / Qwen2.5-VL on a machine without torchvision
    (their video processor needs it) the same processor without its video part, which is all image training uses."""
    import importlib.util

    from transformers import AutoProcessor

    family = _family_of_source(source, kwargs)
    no_torchvision = importlib.util.find_spec("torchvision") is None
    if family is not None and family.image_only_processor is not None and no_torchvision:
        return image_only_processor_class(family.image_only_processor).from_pretrained(source, **kwargs)
    processor = AutoProcessor.from_pretrained(source, **kwargs)
    if family is not None and family.pad_to_square:
        processor.image_processor = padding_image_processor(processor.image_processor)
    return processor


def padding_image_processor(image_processor: Any) -> Any:
    """LLaVA-1.5's preprocessing: a CLIP image processor (what llava-hf ships) swapped for transformers' LLaVA image
    processor with the same settings and ``do_pad`` (pad to a square of the mean colour, then resize and crop, which
    then cuts nothing). Square images give the same pixels as before; an image processor that pads already is kept."""
    if getattr(image_processor, "do_pad", False) or not type(image_processor).__name__.startswith("CLIPImageProcessor"):
        return image_processor
    from transformers import LlavaImageProcessorPil

    settings = {key: value for key, value in image_processor.to_dict().items()
                if not key.startswith("_") and key not in ("image_processor_type", "processor_class")}
    return LlavaImageProcessorPil(**{**settings, "do_pad": True})


def _family_of_source(source: str, kwargs: Mapping[str, Any]) -> Family | None:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, local_files_only=kwargs.get("local_files_only", False))
        return family_for_type(config.model_type)
    except (OSError, UnsupportedModel):
        return None


_IMAGE_ONLY: dict[str, type] = {}


def image_only_processor_class(name: str) -> type:
    """``name`` (Qwen2VLProcessor / Qwen2_5_VLProcessor) without its video processor: constructed, saved and loaded
    from an image processor and a tokenizer alone. Saved folders are the family's usual layout (processor_class
    ``name``), so a machine with torchvision loads them with AutoProcessor as usual."""
    if name not in _IMAGE_ONLY:
        import transformers

        base = getattr(transformers, name)

        class ImageOnly(base):  # type: ignore[misc, valid-type]
            @classmethod
            def get_attributes(cls) -> list[str]:
                return [attribute for attribute in super().get_attributes() if attribute != "video_processor"]

            def __init__(self, image_processor: Any = None, tokenizer: Any = None, video_processor: Any = None,
                         chat_template: str | None = None, **kwargs: Any) -> None:
                super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)
                self.video_processor = None

        ImageOnly.__name__ = ImageOnly.__qualname__ = name  # what save_pretrained records as processor_class
        _IMAGE_ONLY[name] = ImageOnly
    return _IMAGE_ONLY[name]
