"""LoRA as an option for any trainer (PEFT): wrap a model before training, merge the adapters after.

FIRE's recipe trains LLaVA-NeXT with LoRA r=64, alpha=256, dropout 0.05 on the language model's attention
projections and the projector fully; the tiny default model is small enough for full fine-tuning. Merging
after training keeps every saved model a plain Hugging Face folder (safetensors) that ``load_vlm`` reads, so
nothing downstream needs to know LoRA was used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

AUTO = "auto"  # lora.target_modules: auto -> the model family's default layers


@dataclass(frozen=True)
class LoraOptions:
    """Which layers get adapters and how big (conf: ``lora: {r, alpha, dropout, target_modules, ...}``).

    ``target_modules``: module names (last path component, e.g. ``q_proj``), or ``auto``: the family's default
    (:mod:`silkfire.models.families`: every attention and MLP projection of the language model -- what Silkie's
    LoRA covered in Qwen-VL); ``within``: only modules whose path contains this component (``language_model``
    keeps the vision tower's own projections out); None = any.
    ``modules_to_save``: modules trained in full next to the adapters (FIRE: the projector).
    """

    r: int = 64
    alpha: float = 256.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    within: str | None = "language_model"
    modules_to_save: tuple[str, ...] = ()
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora: need r >= 1, alpha > 0, 0 <= dropout < 1 (got r={self.r}, "
                             f"alpha={self.alpha}, dropout={self.dropout})")
        if not self.target_modules:
            raise ValueError("lora.target_modules is empty: name the layers that get adapters (e.g. q_proj)")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | LoraOptions | None,
                     base: LoraOptions | None = None) -> LoraOptions | None:
        """The one LoRA schema of every trainer (SFT ``train.lora``, DPO ``silkie.dpo.lora``, FIRE
        ``fire.sft.<role>.lora``): None (or ``enabled: false``) means no LoRA. A partial mapping fills its missing
        keys from ``base`` (the trainer's own default block), else from these defaults."""
        if values is None or isinstance(values, LoraOptions):
            return values if values is None or values.enabled else None
        if hasattr(values, "items") and not isinstance(values, dict):  # DictConfig
            from omegaconf import OmegaConf

            values = OmegaConf.to_container(values, resolve=True)  # type: ignore[assignment]
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"lora: unknown key(s) {unknown}; known: {sorted(known)}")
        data = {**(asdict(base) if base is not None else {}), **values}
        for key in ("target_modules", "modules_to_save"):
            if key in data:
                value = data[key] or ()
                data[key] = (value,) if isinstance(value, str) else tuple(value)
        options = cls(**data)
        return options if options.enabled else None

    def target_pattern(self) -> str:
        """The regex PEFT full-matches against module paths."""
        names = "|".join(re.escape(name) for name in self.target_modules)
        scope = rf"(?:.*\.)?{re.escape(self.within)}\.(?:.*\.)?" if self.within else r"(?:.*\.)?"
        return rf"{scope}(?:{names})"


@dataclass
class LoraReport:
    """What the wrapping did (logged by the caller)."""

    adapted_modules: list[str] = field(default_factory=list)
    trainable_parameters: int = 0
    total_parameters: int = 0


def apply_lora(model: Any, options: LoraOptions) -> tuple[Any, LoraReport]:
    """Wrap ``model`` with LoRA adapters (PEFT); everything else is frozen except ``modules_to_save``.

    Raises when the pattern matches no module, naming the available leaf names, so a typo never trains the
    full model or nothing silently.
    """
    from dataclasses import replace

    from peft import LoraConfig, get_peft_model

    if AUTO in options.target_modules:
        from silkfire.models.families import lora_defaults

        targets, within = lora_defaults(model)
        named = tuple(name for name in options.target_modules if name != AUTO)
        options = replace(options, target_modules=tuple(dict.fromkeys(targets + named)),
                          within=options.within if options.within is not None else within)
    pattern = options.target_pattern()
    matched = [name for name, _ in model.named_modules() if re.fullmatch(pattern, name)]
    if not matched:
        leaves = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if not list(module.children())})
        raise ValueError(f"lora: no module matches target_modules={list(options.target_modules)} within "
                         f"{options.within!r}; leaf module names: {leaves}")
    config = LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=pattern,
        modules_to_save=list(options.modules_to_save) or None,
        bias="none",
    )
    wrapped = get_peft_model(model, config)
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    total = sum(p.numel() for p in wrapped.parameters())
    return wrapped, LoraReport(matched, trainable, total)


def is_lora(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a pinned dependency
        return False
    return isinstance(model, PeftModel)


def merge_lora(model: Any) -> Any:
    """The base model with the adapters folded into its weights (a plain model again); others unchanged."""
    return model.merge_and_unload() if is_lora(model) else model


def load_adapter_checkpoint(model: Any, checkpoint: Path) -> None:
    """Load a PEFT checkpoint's adapter weights (safetensors) into an already wrapped model (for resume)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(checkpoint) / "adapter_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {checkpoint} is not a LoRA checkpoint")
    result = set_peft_model_state_dict(model, load_file(str(path)))
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ValueError(f"{path}: adapter weights that the model does not have: {unexpected[:5]}")


def trainable_names(model: Any) -> Sequence[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]
