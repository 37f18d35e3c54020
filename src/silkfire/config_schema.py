"""The config's schema is conf/ itself: a composed config may hold only keys that some file under conf/ (outside
experiment/) declares, with a value of the kind declared there. Checked once, when the config is composed.

Why this and not a hand-written schema: defaults live only in YAML (issue 15), so a second typed copy of 365 keys
would drift from it. Hydra already refuses an override of an unknown key (``train.learnng_rate=...``), but not one
added with ``+``/``++`` and not a typo inside an experiment file, which Hydra merges in as a new key that no stage
reads -- the run then trains the default recipe and nobody notices. Every option file of every group is read
(experiment files excluded: they hold differences only, so they may not invent keys) and the union of their keys
and value kinds is the schema.

Typed sections are parsed by their stage's dataclass on top of this (silkfire.stages.runner.check_config): this
check catches the sections no dataclass reads (paths, pipeline, register, silkie.sample, fire.dialogues, ...).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

# Maps whose keys are names the user picks (a policy, a question family, a metric): any child key is valid there.
OPEN_MAPS = (
    "silkie.sample.pool",            # policy name -> entry
    "silkie.sample.family_weights",  # question family -> share
    "train.family_weights",
    "fire.sft.student.family_weights",
    "fire.sft.teacher.family_weights",
    "quality.drift.tolerances",      # metric -> max TVD
    "quality.world.families",        # question family -> its categories
    "register.guards",               # metric -> {mode, tolerance}
    "silkie.register.guards",
    "world.colors",                  # colour name -> RGB
    "world.sizes",                   # size name -> width
)
GROUPS_NOT_IN_SCHEMA = ("experiment",)
SCALARS = ("boolean", "number", "string")  # differences only: they set keys, never declare them


class UnknownConfigKeyError(ValueError):
    """A composed config holds a key no conf/ file declares, or a value of another kind than declared."""


def kind(value: Any) -> str | None:
    """The kind of a value as the schema compares it: None for null and for an unresolved interpolation."""
    if value is None or (isinstance(value, str) and "${" in value):
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple, ListConfig)):
        return "list"
    if isinstance(value, (dict, DictConfig)):
        return "mapping"
    return type(value).__name__


def leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf; an empty mapping is a leaf (its key is declared, its children open)."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


def _declarations(conf_dir: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(package, content) of the root config and of every option of every group, experiment files excluded.

    Read as files rather than composed per option: the same keys, in milliseconds instead of seconds. A file's
    package is its group path (``silkie/judge`` -> ``silkie.judge``) unless its header says ``# @package _global_``."""
    for path in sorted(conf_dir.rglob("*.yaml")):
        group = path.parent.relative_to(conf_dir).as_posix()
        if group != "." and group.split("/")[0] in GROUPS_NOT_IN_SCHEMA:
            continue
        text = path.read_text(encoding="utf-8")
        content = OmegaConf.to_container(OmegaConf.create(text), resolve=False) or {}
        assert isinstance(content, dict), f"{path}: a config file must hold a mapping"
        content.pop("defaults", None)
        package = "" if group == "." or text.startswith("# @package _global_") else group.replace("/", ".")
        yield package, content


@lru_cache(maxsize=4)
def schema(conf_dir: Path) -> dict[str, frozenset[str | None]]:
    """Every key any group option declares -> the kinds of value declared for it (None: null or interpolated)."""
    declared: dict[str, set[str | None]] = {}
    for package, content in _declarations(conf_dir):
        for key, value in leaves(content, f"{package}." if package else ""):
            declared.setdefault(key, set()).add(kind(value))
    return {key: frozenset(kinds) for key, kinds in declared.items()}


def _open(key: str) -> bool:
    return any(key.startswith(f"{name}.") for name in OPEN_MAPS)


def _declared_parent(key: str, declared: dict[str, frozenset[str | None]]) -> bool:
    """A key under a declared leaf that is a mapping or null (``lora: null`` declares a block set elsewhere)."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in declared and declared[".".join(parts[:i])] <= {None, "mapping"}
               for i in range(1, len(parts)))


def closest(key: str, conf_dir: Path) -> str | None:
    """The declared key nearest to ``key`` (a typo's likely meaning), or None."""
    close = difflib.get_close_matches(key, schema(conf_dir.resolve()), n=1, cutoff=0.8)
    return close[0] if close else None


def problems(cfg: DictConfig, conf_dir: Path) -> list[str]:
    """What in ``cfg`` the schema refuses, one line each (empty: the config is fine)."""
    declared = schema(conf_dir.resolve())
    found = []
    values = OmegaConf.to_container(cfg, resolve=False)
    for key, value in leaves(values):
        if key == "hydra" or key.startswith("hydra.") or _open(key):
            continue
        if key not in declared:
            if _declared_parent(key, declared):
                continue  # e.g. fire.sft.student.lora.r where conf declares lora: null; its parser checks it
            hint = f" (did you mean {near}?)" if (near := closest(key, conf_dir)) else ""
            found.append(f"{key}: no file under conf/ declares this key{hint}")
            continue
        kinds = declared[key] - {None}
        got = kind(value)
        # a declared string admits any scalar (modes such as resume: auto | true | false, names made of digits)
        if kinds and got is not None and got not in kinds and not ("string" in kinds and got in SCALARS):
            found.append(f"{key}: {value!r} is a {got}; conf/ declares a {' or '.join(sorted(kinds))} here")
    return found


def check(cfg: DictConfig, conf_dir: Path) -> None:
    """Raise :class:`UnknownConfigKeyError` listing every unknown key and wrongly kinded value."""
    if found := problems(cfg, conf_dir):
        raise UnknownConfigKeyError("the composed config does not match conf/ (a typo, or a key no stage reads):\n  "
                                    + "\n  ".join(found))
