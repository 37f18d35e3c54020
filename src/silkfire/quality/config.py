"""The data-quality gate's configuration (Hydra group ``quality``): frozen dataclasses built from a mapping.

Shared settings sit at the top level; every gate (``world``, ``vlfeedback``, ``pairs``, ``fire``, ``mme``,
``mmhal``) has its own section, whose ``policy`` / ``max_tokens`` / image settings default (``null``) to the
shared ones. Unknown keys raise, naming the allowed ones.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from silkfire.images import DEFAULT_MAX_PIXELS

POLICIES = ("fail", "filter")  # fail: any failed expectation stops the pipeline; filter: quarantine bad rows
KINDS = ("world", "vlfeedback", "pairs", "fire", "mme", "mmhal")
PAIR_RULES = ("silkie", "strict")  # = silkfire.vlfeedback.pair_rule.RULES (the gate does not import the builder)

_DEFAULT_FAMILIES: dict[str, tuple[str, ...]] = {
    "mme": ("existence", "count", "position", "color", "numerical_calculation", "comparison"),
    "open": ("count", "color", "position", "describe"),
    "probe": ("color", "position"),
}
# lmms-lab/MME's 14 subtasks, plus the shapes world's "comparison" (a cognition category of our own).
MME_CATEGORIES = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
    "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning", "comparison",
)
# MMHal-Bench: the question type of item i is MMHAL_TYPES[i % 8].
MMHAL_TYPES = ("attribute", "adversarial", "comparison", "counting", "relation", "environment", "holistic", "other")
VLFEEDBACK_ASPECTS = ("Helpfulness", "Visual Faithfulness", "Ethical Considerations")


# ---- generic building from a mapping ------------------------------------------------------------------------
def _convert(value: Any, hint: Any, where: str) -> Any:
    """Check/convert one value against a field's type hint (str, int, float, bool, tuples, Optional, mappings)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _convert(value, inner, where)
    if hint is str:
        return _text(value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if origin is tuple:
        args = typing.get_args(hint)
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(item, args[0], where) for item in value)
        if len(value) != len(args):
            raise ValueError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_convert(item, arg, where) for item, arg in zip(value, args))
    raise TypeError(f"{where}: unsupported config type {hint!r}")  # pragma: no cover - a bug in this module


def _build(cls: type, cfg: Mapping[str, Any] | Any, where: str, special: Mapping[str, Any] | None = None) -> Any:
    data = _plain(cfg, where)
    _refuse_unknown(cls, data, where)
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if special and key in special:
            kwargs[key] = special[key](value, f"{where}.{key}")
        else:
            kwargs[key] = _convert(value, hints[key], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except ValueError as error:
        if str(error).startswith(where):
            raise
        raise ValueError(f"{where}: {error}") from error


def _as_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in dataclasses.fields(obj):
        value = getattr(obj, item.name)
        if dataclasses.is_dataclass(value):
            value = value.to_dict()
        elif isinstance(value, tuple):
            value = list(value)
        out[item.name] = value
    return out


# ---- per-gate sections --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GateConfig:
    """What every gate section may set; ``None`` means "use the shared (top-level) setting"."""

    policy: str | None = None  # fail | filter
    max_tokens: int | None = None  # longest text field in whitespace tokens
    check_images: bool | None = None  # false: no image checks for this gate
    image_size: tuple[int, int] | None = None  # expected (width, height); null: any size
    image_mode: str | None = None  # expected PIL mode ("RGB"); null: any mode

    KIND: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if self.policy is not None and self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {list(POLICIES)}, got {self.policy!r}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | Any) -> Any:
        return _build(cls, cfg, f"quality.{cls.KIND}")

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)


@dataclass(frozen=True)
class WorldSuiteConfig(GateConfig):
    """What the world suite expects beyond the generic settings (the data contract in docs/common notes)."""

    # family -> the categories it may use; the "mme" family's categories are also mme.jsonl's categories
    families: tuple[tuple[str, tuple[str, ...]], ...] = tuple(_DEFAULT_FAMILIES.items())
    answers: tuple[str, ...] = ("Yes", "No")  # answers of the mme family and of mme.jsonl
    mme_suffix: str = " Please answer yes or no."  # every MME-style question ends with MME's suffix

    KIND: ClassVar[str] = "world"

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | Any) -> WorldSuiteConfig:
        return _build(cls, cfg, "quality.world", {"families": _families})

    @property
    def family_categories(self) -> dict[str, tuple[str, ...]]:
        return dict(self.families)

    @property
    def mme_categories(self) -> tuple[str, ...]:
        return self.family_categories.get("mme", ())

    def to_dict(self) -> dict[str, Any]:
        data = _as_dict(self)
        data["families"] = {name: list(cats) for name, cats in self.families}
        return data


def _families(families: Any, where: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(families, Mapping) or not families:
        raise ValueError(f"{where}: expected a mapping family -> [categories]")
    return tuple((_text(name, where), _texts(cats, f"{where}.{name}")) for name, cats in families.items())


@dataclass(frozen=True)
class VLFeedbackConfig(GateConfig):
    """VLFeedback records (MMInstruction/VLFeedback): 4 completions rated on 3 aspects, ratings "1".."5"."""

    completions: int = 4  # completions (and models) per prompt
    aspects: tuple[str, ...] = VLFEEDBACK_ASPECTS
    ratings: tuple[int, int] = (1, 5)  # the Rating string must parse to an integer in this range

    KIND: ClassVar[str] = "vlfeedback"


@dataclass(frozen=True)
class PairsConfig(GateConfig):
    """Preference pairs (docs/quality.md): chosen_score > rejected_score; under rule ``strict`` also chosen differs
    from rejected and no (image, prompt, chosen, rejected) repeats."""

    min_margin: float = 0.0  # chosen_score - rejected_score must be > this (0: strictly greater)
    # the pair rule that built the file (silkfire.vlfeedback.pair_rule): strict refuses repeated (image, prompt, chosen,
    # rejected) and chosen == rejected; silkie (vlf-silkie's run_dpo.py) keeps both, as the released code does.
    # The `pairs` stage sets it from silkie.pairs.rule; a file checked on its own is checked strictly by default.
    rule: str = "strict"

    KIND: ClassVar[str] = "pairs"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rule not in PAIR_RULES:
            raise ValueError(f"rule must be one of {list(PAIR_RULES)}, got {self.rule!r}")


@dataclass(frozen=True)
class FireConfig(GateConfig):
    """FIRE dialogues (MM-FIRE/FIRE raw records)."""

    image_field: str = "image"  # which path field the image checks read ("image" or the flattened "img_path")
    scores: tuple[int, int] = (0, 10)  # the teacher's parsed score must lie in this range
    rounds: tuple[int, int] = (1, 10)  # allowed values of `round` (FIRE-1M: 2-3, FIRE-Bench: 2-6)
    # share of records whose stored score[] must equal the scores parsed from the teacher turns: upstream
    # stores N/10 scores wrongly (5 of 281 sampled records), so a small disagreement is tolerated
    score_agreement: float = 0.95
    leak_min_chars: int = 3  # ground truths shorter than this (and not numbers) are not leak-checked
    leak_ignore: tuple[str, ...] = ("yes", "no", "true", "false")  # answers too common in prose to check

    KIND: ClassVar[str] = "fire"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.score_agreement <= 1.0:
            raise ValueError(f"score_agreement must lie in [0, 1], got {self.score_agreement}")


@dataclass(frozen=True)
class MMEConfig(GateConfig):
    """MME items (lmms-lab/MME field names): two questions per question_id, one Yes, one No."""

    answers: tuple[str, ...] = ("Yes", "No")
    categories: tuple[str, ...] | None = MME_CATEGORIES  # null: any category
    question_suffix: str | None = "Please answer yes or no."  # null: not checked

    KIND: ClassVar[str] = "mme"


@dataclass(frozen=True)
class MMHalConfig(GateConfig):
    """MMHal-Bench items: 8 question types interleaved (type of item i == types[i % 8])."""

    types: tuple[str, ...] = MMHAL_TYPES
    check_order: bool = True  # the interleaving check (the benchmark's per-type scores rely on it)

    KIND: ClassVar[str] = "mmhal"


_SECTIONS: dict[str, type[GateConfig]] = {
    "world": WorldSuiteConfig,
    "vlfeedback": VLFeedbackConfig,
    "pairs": PairsConfig,
    "fire": FireConfig,
    "mme": MMEConfig,
    "mmhal": MMHalConfig,
}


@dataclass(frozen=True)
class DriftConfig:
    """Distribution checks against the previous data version's profile (``profile.json``)."""

    max_tvd: float = 0.1  # largest total variation distance 0.5 * sum |p - q| allowed per metric
    top_k: int = 20  # categories kept per metric; the rest are pooled as "<other>"
    min_rows: int = 30  # fewer values than this on either side: the metric is reported, not checked
    tolerances: tuple[tuple[str, float], ...] = ()  # per-metric max_tvd, e.g. {"mme.answer": 0.05}

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_tvd <= 1.0:
            raise ValueError(f"max_tvd must lie in [0, 1], got {self.max_tvd}")
        if self.top_k < 1 or self.min_rows < 0:
            raise ValueError("top_k must be >= 1 and min_rows >= 0")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | Any) -> DriftConfig:
        return _build(cls, cfg, "quality.drift", {"tolerances": _tolerances})

    def tolerance(self, metric: str) -> float:
        return dict(self.tolerances).get(metric, self.max_tvd)

    def to_dict(self) -> dict[str, Any]:
        data = _as_dict(self)
        data["tolerances"] = dict(self.tolerances)
        return data


def _tolerances(value: Any, where: str) -> tuple[tuple[str, float], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping metric -> max TVD")
    return tuple((_text(key, where), _convert(item, float, f"{where}.{key}")) for key, item in value.items())


@dataclass(frozen=True)
class QualityConfig:
    """Settings shared by every gate, plus one section per gate (see conf/quality/default.yaml)."""

    policy: str = "fail"  # default policy of every gate: fail | filter
    max_quarantine_fraction: float = 0.05  # filter: a larger share of bad rows fails the gate anyway
    workers: int = 4  # threads that decode images
    max_examples: int = 5  # example values (with their lines) shown per failed expectation
    max_lines: int = 1000  # failing line numbers kept per expectation in validation.json
    image_size: int = 48  # expected width = height of every world image (= WorldConfig.image_size by default)
    image_mode: str = "RGB"  # expected PIL mode of every world image
    max_text_length: int = 2000  # longest world question/answer accepted (characters)
    check_images: bool = True  # false skips every image check (benchmarks, text-only dry runs)
    # The image policy's pixel limit (silkfire.images), for the gates and every stage that reads or sends an image.
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    data_docs: bool = True  # false: no Data Docs HTML (saves ~1 s a gate; the JSON/text reports stay)
    chunk_size: int = 50_000  # records parsed and derived at a time (bounds memory on large files)
    processes: int = 2  # processes for a large JSONL file (>= 64 MB) in blocks; FIRE columnar: threads; 1: in-process
    min_tokens: int = 1  # shortest text field in whitespace tokens
    max_tokens: int = 2048  # longest text field in whitespace tokens (per gate: <gate>.max_tokens)
    drift: DriftConfig = field(default_factory=DriftConfig)
    world: WorldSuiteConfig = field(default_factory=WorldSuiteConfig)
    vlfeedback: VLFeedbackConfig = field(default_factory=VLFeedbackConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    fire: FireConfig = field(default_factory=FireConfig)
    mme: MMEConfig = field(default_factory=MMEConfig)
    mmhal: MMHalConfig = field(default_factory=MMHalConfig)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"quality.policy must be one of {list(POLICIES)}, got {self.policy!r}")
        for name in ("workers", "max_examples", "max_lines", "image_size", "max_text_length", "chunk_size",
                     "processes", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"quality.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_image_pixels < 0:
            raise ValueError(f"quality.max_image_pixels must be >= 0 (0: no limit), got {self.max_image_pixels}")
        if self.min_tokens < 0 or self.min_tokens > self.max_tokens:
            raise ValueError(f"quality.min_tokens must lie in [0, max_tokens], got {self.min_tokens}")
        if not 0.0 <= self.max_quarantine_fraction <= 1.0:
            raise ValueError(f"quality.max_quarantine_fraction must lie in [0, 1], got {self.max_quarantine_fraction}")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | Any) -> QualityConfig:
        """Build from a dict or an OmegaConf DictConfig (conf/quality/default.yaml); unknown keys raise."""
        special: dict[str, Any] = {name: (lambda value, where, s=section: s.from_mapping(value))
                                   for name, section in _SECTIONS.items()}
        special["drift"] = lambda value, where: DriftConfig.from_mapping(value)
        return _build(cls, cfg, "quality", special)

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)

    # ---- one gate's effective settings --------------------------------------------------------------------
    def section(self, kind: str) -> GateConfig:
        if kind not in _SECTIONS:
            raise ValueError(f"unknown gate kind {kind!r}; known: {list(_SECTIONS)}")
        return getattr(self, kind)

    def policy_for(self, kind: str) -> str:
        return self.section(kind).policy or self.policy

    def max_tokens_for(self, kind: str) -> int:
        return self.section(kind).max_tokens or self.max_tokens

    def images_for(self, kind: str) -> bool:
        own = self.section(kind).check_images
        return self.check_images if own is None else own

    def image_shape_for(self, kind: str) -> tuple[tuple[int, int] | None, str | None]:
        """(size, mode) the images of a gate must have; the world follows the shared image_size/mode."""
        section = self.section(kind)
        if kind == "world":
            return (section.image_size or (self.image_size, self.image_size)), (section.image_mode or self.image_mode)
        return section.image_size, section.image_mode


def _plain(cfg: Any, where: str) -> dict[str, Any]:
    try:  # OmegaConf is optional: plain dicts need no import
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra/dvc
        pass
    if cfg is None:
        return {}
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = cfg.to_dict()
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
