"""One way to load a VLM (local tiny model or hub checkpoint) and to prepare the base model of a run."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from silkfire.models.config import DTYPES, ModelConfig

__all__ = ["ModelConfig", "ModelLoadError", "checkpoint_dtype", "load_vlm", "prepare_base_model"]


class ModelLoadError(RuntimeError):
    """A model source could not be loaded; the message says what was tried and what to do."""


def _looks_like_path(source: str) -> bool:
    # A hub id is "name" or "owner/name"; an existing path, or anything absolute/relative-looking or with
    # more than one slash, is a local directory.
    return (
        Path(source).expanduser().exists()
        or source.startswith((".", "/", "~"))
        or source.count("/") > 1
        or "\\" in source
    )


def load_vlm(source: str | Path, *, dtype: str = "float32", device: str = "auto") -> tuple[Any, Any]:
    """Load ``(model, processor)`` through ``AutoModelForImageTextToText`` / ``AutoProcessor``.

    ``source`` is a local model directory (loaded with ``local_files_only=True``) or a hub name such as
    ``llava-hf/llava-1.5-7b-hf`` (resolved from the local Hugging Face cache when ``HF_HUB_OFFLINE=1``).
    Weights are read from safetensors only. The model is returned in eval mode on ``device`` in ``dtype``,
    both resolved by :mod:`silkfire.runtime` (``device``: auto | cpu | cuda | cuda:N, ``auto`` = the GPU when
    there is one; ``dtype``: auto | float32 | bfloat16 | float16). Stages pass their resolved ``runtime``;
    training loads float32 master weights and autocasts.
    """
    from transformers import AutoModelForImageTextToText

    from silkfire.models.families import load_processor
    from silkfire.runtime import oom_hint, resolve

    if dtype not in ("auto", *DTYPES):
        raise ValueError(f"dtype must be one of {('auto', *DTYPES)}, got {dtype!r}")
    runtime = resolve(device, dtype)
    source_str = str(source)
    is_local = isinstance(source, Path) or _looks_like_path(source_str)
    if is_local:
        path = Path(source_str).expanduser()
        if not path.is_dir():
            raise ModelLoadError(
                f"model directory {path} does not exist: run the stage that builds it first "
                "(e.g. the base-model or sft stage), or pass a hub name such as llava-hf/llava-1.5-7b-hf"
            )
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is not a model directory (no config.json): expected the output of save_pretrained"
            )
        source_str = str(path)
    offline = is_local or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            source_str, dtype=runtime.torch_dtype(), local_files_only=offline, use_safetensors=True
        )
        # AutoProcessor, or for Qwen2-VL without torchvision the same processor minus its video part
        processor = load_processor(source_str, local_files_only=offline)
    except OSError as error:
        if is_local:
            raise ModelLoadError(f"could not load a VLM from the directory {source_str}: {error}") from error
        raise ModelLoadError(
            f"could not load {source_str!r}: it is not an existing local directory, and as a hub name it was not "
            f"found {'in the local HF cache (HF_HUB_OFFLINE=1)' if offline else 'on the hub'}: {error}. "
            "Check the path, or download the checkpoint into the HF cache first."
        ) from error
    advice = [] if runtime.dtype != "float32" else ["set runtime.dtype=bfloat16 (half the weights' memory)"]
    with oom_hint(f"loading {source_str}", {}, runtime=runtime,
                  advice=advice + ["choose a GPU with more memory (runtime.device=cuda:N)", "or a smaller model"]):
        model.to(runtime.device)
    model.eval()
    return model, processor


def checkpoint_dtype(source: str | Path) -> str | None:
    """The dtype a checkpoint's weights are stored in (its config.json ``dtype``/``torch_dtype``), if it says.

    Training keeps float32 master weights; the trained model is saved back in this dtype, so a bf16 checkpoint
    stays a bf16 folder of the same size."""
    import json

    path = Path(str(source)).expanduser() / "config.json"
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
    else:
        try:
            from transformers import AutoConfig

            data = AutoConfig.from_pretrained(str(source), local_files_only=True).to_dict()
        except (OSError, ValueError):
            return None
    value = data.get("dtype") or data.get("torch_dtype")
    value = str(value).replace("torch.", "") if value is not None else None
    return value if value in DTYPES else None


def prepare_base_model(model_cfg: ModelConfig, texts: Iterable[str], out_dir: Path, *, seed: int = 0) -> str | Path:
    """The starting point of training, as something :func:`load_vlm` accepts.

    ``source: build`` trains the tokenizer on ``texts``, builds the tiny LLaVA (seeded) and saves it to
    ``out_dir`` (returned). ``source: pretrained`` returns ``name_or_path`` unchanged (``texts`` unused):
    a local directory as a Path, a hub name as a string.
    """
    if model_cfg.source == "pretrained":
        assert model_cfg.name_or_path is not None  # checked by ModelConfig
        local = Path(model_cfg.name_or_path).expanduser()
        return local if local.is_dir() else model_cfg.name_or_path
    from silkfire.models.tiny_llava import build_tiny_llava

    return build_tiny_llava(model_cfg, texts, Path(out_dir), seed=seed)
