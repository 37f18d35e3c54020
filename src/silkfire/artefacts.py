"""Where the pipeline's artefacts live: the paths one stage writes and later stages, the accelerate launchers
(silkfire.train.launch, launch_dpo) and the policy pool read, from the config's ``paths.*``. One definition each,
so a stage and every reader agree on the exact file.

Quality gates: each gate writes its report folder ``<paths.reports>/<gate>``; under policy ``filter`` it also
writes clean copies under ``clean/`` (the kept rows, same file name), which every later reader takes instead of
the original: the ``gated_*`` functions. The stage modules re-export the names they always had
(``silkfire.stages.validate.gated_file``, ``silkfire.stages.pairs.gated_pairs``, ...).

A library module: it imports no stage (pyproject.toml's import-linter contracts).
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

# ---- foundation ---------------------------------------------------------------------------------------------------
WORLD_GATE = "validate"  # the world's gate (stage `validate`): its report folder under paths.reports
BASE_SOURCE_FILE = "source.json"  # in paths.base_model when the `base` stage points at a pretrained checkpoint


def world_report_dir(cfg: DictConfig, root: Path) -> Path:
    return root / cfg.paths.reports / WORLD_GATE


def gated_file(cfg: DictConfig, root: Path, name: str) -> Path:
    """The world file a later stage must read: the gate's clean copy when the policy filtered rows."""
    clean = world_report_dir(cfg, root) / "clean" / name
    return clean if clean.is_file() else root / cfg.paths.world / name


def resolve_base(base_dir: Path) -> str | Path:
    """What load_vlm needs for the base model the `base` stage prepared in `base_dir`."""
    pointer = base_dir / BASE_SOURCE_FILE
    if pointer.is_file():
        return json.loads(pointer.read_text(encoding="utf-8"))["name_or_path"]
    return base_dir


# ---- VLFeedback / Silkie branch (files under paths.feedback) ----------------------------------------------------
SAMPLES = "samples.jsonl"  # `sample`: records without annotations
ANNOTATED = "annotated.jsonl"  # `annotate`: the judged records
PAIRS = "pairs.jsonl"  # `pairs`: the preference pairs
FEEDBACK_GATE = "validate_feedback"  # gate on the judged records
PAIRS_GATE = "pairs"  # gate on the pairs (run by the `pairs` stage)


def feedback_image_root(cfg: DictConfig, root: Path) -> Path:
    """Folder the records' img_path values are relative to: the world, or silkie.sample.image_root."""
    sample = cfg.silkie.sample
    if sample.source == "world":
        return root / cfg.paths.world
    if not sample.image_root:
        raise ValueError("silkie.sample.image_root: set it to the folder the prompts' img_path values are "
                         "relative to (needed when silkie.sample.source is vlfeedback)")
    return root / str(sample.image_root)


def feedback_report_dir(cfg: DictConfig, root: Path) -> Path:
    return root / cfg.paths.reports / FEEDBACK_GATE


def gated_feedback(cfg: DictConfig, root: Path) -> Path:
    """The annotated file the next stage must read: the gate's clean copy when its policy filtered records."""
    clean = feedback_report_dir(cfg, root) / "clean" / ANNOTATED
    return clean if clean.is_file() else root / cfg.paths.feedback / ANNOTATED


def gated_pairs(cfg: DictConfig, root: Path) -> Path:
    """The pairs DPO must read: the gate's clean copy when its policy filtered pairs."""
    clean = root / cfg.paths.reports / PAIRS_GATE / "clean" / PAIRS
    return clean if clean.is_file() else root / cfg.paths.feedback / PAIRS


# ---- FIRE branch (files under paths.fire) -----------------------------------------------------------------------
DIALOGUE_GATE = "validate_dialogues"  # gate on the simulated (or published) dialogues, one folder per split


def dialogue_report_dir(cfg: DictConfig, root: Path) -> Path:
    return root / cfg.paths.reports / DIALOGUE_GATE


def dialogue_file(cfg: DictConfig, root: Path, split: str) -> Path:
    """The dialogues stage's output file of a split."""
    return dialogue_dir(cfg, root) / f"{split}.jsonl"


DIALOGUE_SOURCES = ("simulate", "published")  # fire.dialogues.source
# world file of each dialogue split; val comes last so train and test draw exactly what they drew before it existed
SPLIT_FILES = {"train": "train.jsonl", "test": "open.jsonl", "val": "val.jsonl"}


def dialogue_dir(cfg: DictConfig, root: Path) -> Path:
    """The `dialogues` stage's output folder (one ``<split>.jsonl`` per split)."""
    return root / cfg.paths.fire / "dialogues"


def dialogue_source(cfg: DictConfig) -> str:
    """Where the dialogues come from: ``simulate`` (the world) or ``published`` (FIRE's files)."""
    source = str(cfg.fire.dialogues.get("source") or "simulate")
    if source not in DIALOGUE_SOURCES:
        raise ValueError(f"fire.dialogues.source: expected one of {list(DIALOGUE_SOURCES)}, got {source!r}")
    return source


def dialogue_splits(cfg: DictConfig) -> tuple[str, ...]:
    """The dialogue files this config makes: train, test and val; published data has val only when
    ``fire.dialogues.published.val_file`` is set (FIRE releases no validation split)."""
    if dialogue_source(cfg) == "published" and not (cfg.fire.dialogues.get("published") or {}).get("val_file"):
        return ("train", "test")
    return tuple(SPLIT_FILES)


def dialogue_image_root(cfg: DictConfig, root: Path) -> Path:
    """The folder the dialogues' image paths resolve against: the world, or ``fire.dialogues.published.image_root``
    for published dialogues (FIRE ships no images: they come from its ~27 source sets)."""
    if dialogue_source(cfg) == "simulate":
        return root / cfg.paths.world
    folder = (cfg.fire.dialogues.get("published") or {}).get("image_root")
    if not folder:
        raise ValueError("fire.dialogues.published.image_root: set it to the folder FIRE's image paths "
                         "(e.g. mathvista/images/530.jpg) are relative to (needed when fire.dialogues.source is "
                         "published)")
    return root / str(folder)


def gated_dialogues(cfg: DictConfig, root: Path, split: str) -> Path:
    """The dialogue file later stages read: the gate's clean copy when the policy filtered dialogues."""
    clean = dialogue_report_dir(cfg, root) / split / "clean" / f"{split}.jsonl"
    return clean if clean.is_file() else dialogue_file(cfg, root, split)
