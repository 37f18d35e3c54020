"""The data-quality gate's configuration (Hydra group ``quality``): frozen dataclasses built from a mapping."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Policies the gate knows. Only "fail" is implemented: any failed expectation stops the pipeline.
IMPLEMENTED_POLICIES = ("fail",)
PLANNED_POLICIES = {
    "filter": "quarantine the failing records and go on with the rest; it arrives with the quarantine-policy "
    "issue (a later issue of the data-quality milestone)",
}

_DEFAULT_FAMILIES: dict[str, tuple[str, ...]] = {
    "mme": ("existence", "count", "position", "color", "numerical_calculation", "comparison"),
    "open": ("count", "color", "position", "describe"),
    "probe": ("color", "position"),
}


@dataclass(frozen=True)
class WorldSuiteConfig:
    """What the world suite expects beyond the generic settings (the data contract in docs/common notes)."""

    # family -> the categories it may use; the "mme" family's categories are also mme.jsonl's categories
    families: tuple[tuple[str, tuple[str, ...]], ...] = tuple(_DEFAULT_FAMILIES.items())
    answers: tuple[str, ...] = ("Yes", "No")  # answers of the mme family and of mme.jsonl
    mme_suffix: str = " Please answer yes or no."  # every MME-style question ends with MME's suffix

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | Any) -> WorldSuiteConfig:
        data = _plain(cfg, "quality.world")
        _refuse_unknown(cls, data, "quality.world")
        kwargs: dict[str, Any] = {}
        if "families" in data:
            families = data["families"]
            if not isinstance(families, Mapping) or not families:
                raise ValueError("quality.world.families: expected a mapping family -> [categories]")
            kwargs["families"] = tuple(
                (_text(name, "quality.world.families"), _texts(cats, f"quality.world.families.{name}"))
                for name, cats in families.items()
            )
        if "answers" in data:
            kwargs["answers"] = _texts(data["answers"], "quality.world.answers")
        if "mme_suffix" in data:
            kwargs["mme_suffix"] = _text(data["mme_suffix"], "quality.world.mme_suffix")
        return cls(**kwargs)

    @property
    def family_categories(self) -> dict[str, tuple[str, ...]]:
        return dict(self.families)

    @property
    def mme_categories(self) -> tuple[str, ...]:
        return self.family_categories.get("mme", ())

    def to_dict(self) -> dict[str, Any]:
        return {
            "families": {name: list(cats) for name, cats in self.families},
            "answers": list(self.answers),
            "mme_suffix": self.mme_suffix,
        }


@dataclass(frozen=True)
class QualityConfig:
    """Settings shared by every suite of the gate, plus one section per suite (``world`` for now)."""

    policy: str = "fail"  # what a failed expectation does; only "fail" exists yet
    workers: int = 4  # threads that decode images
    max_examples: int = 5  # example values (with their lines) shown per failed expectation
    max_lines: int = 1000  # failing line numbers kept per expectation in validation.json
    image_size: int = 64  # expected width = height of every image (keep equal to world.image_size)
    image_mode: str = "RGB"  # expected PIL mode of every image
    max_text_length: int = 2000  # longest question/answer text accepted (characters)
    world: WorldSuiteConfig = field(default_factory=WorldSuiteConfig)

    def __post_init__(self) -> None:
        if self.policy not in IMPLEMENTED_POLICIES:
            if self.policy in PLANNED_POLICIES:
                raise ValueError(
                    f"quality.policy {self.policy!r} is not implemented yet ({PLANNED_POLICIES[self.policy]}); "
                    "use policy: fail"
                )
            raise ValueError(
                f"quality.policy must be one of {list(IMPLEMENTED_POLICIES)}, got {self.policy!r}"
            )
        for name in ("workers", "max_examples", "max_lines", "image_size", "max_text_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"quality.{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | Any) -> QualityConfig:
        """Build from a dict or an OmegaConf DictConfig (conf/quality/default.yaml); unknown keys raise."""
        data = _plain(cfg, "quality")
        _refuse_unknown(cls, data, "quality")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key == "world":
                kwargs[key] = WorldSuiteConfig.from_mapping(value)
            elif key in ("policy", "image_mode"):
                kwargs[key] = _text(value, f"quality.{key}")
            else:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"quality.{key}: expected an integer, got {value!r}")
                kwargs[key] = value
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "world"}
        data["world"] = self.world.to_dict()
        return data


def _plain(cfg: Any, where: str) -> dict[str, Any]:
    try:  # OmegaConf is optional: plain dicts need no import
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra/dvc
        pass
    if cfg is None:
        return {}
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(cfg).__name__}")
    return dict(cfg)


def _refuse_unknown(cls: type, data: Mapping[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(known)} (see conf/quality/default.yaml)"
        )


def _text(value: Any, where: str) -> str:
    # YAML 1.1 reads unquoted Yes/No as booleans: say so instead of comparing answers with True/False.
    if isinstance(value, bool):
        raise ValueError(f"{where}: got the boolean {value!r}; quote it in YAML (\"Yes\", \"No\")")
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, got {value!r}")
    return value


def _texts(values: Any, where: str) -> tuple[str, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise ValueError(f"{where}: expected a list of strings, got {values!r}")
    return tuple(_text(value, where) for value in values)
