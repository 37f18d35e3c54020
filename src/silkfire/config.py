"""Compose the Hydra config into params.yaml (exactly as DVC's Hydra integration does) and load it back.

`params.yaml` is the single source of parameters for every stage: DVC tracks each stage's exact keys in it,
`dvc exp run -S key=value` recomposes it from `conf/`, and `silkfire run key=value` recomposes it the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

PARAMS_FILE = "params.yaml"
CONFIG_DIR = "conf"
CONFIG_NAME = "config"


class ProjectNotFoundError(RuntimeError):
    """No Silkfire project (a directory holding dvc.yaml and conf/) around the working directory."""


def project_root(start: str | Path | None = None) -> Path:
    """The project root: $SILKFIRE_ROOT, else the nearest directory upwards holding dvc.yaml and conf/."""
    if env_root := os.environ.get("SILKFIRE_ROOT"):
        return Path(env_root).resolve()
    here = Path(start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file() and (candidate / CONFIG_DIR).is_dir():
            return candidate
    raise ProjectNotFoundError(
        f"no Silkfire project found at or above {here}: run this from the repository root "
        "(the directory with dvc.yaml and conf/), or set SILKFIRE_ROOT"
    )


def compose(overrides: Sequence[str] = (), root: Path | None = None) -> DictConfig:
    """Compose conf/config.yaml with Hydra overrides, resolved (no interpolations left)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    root = root or project_root()
    with initialize_config_dir(str(root / CONFIG_DIR), version_base=None):
        cfg = hydra_compose(config_name=CONFIG_NAME, overrides=list(overrides))
    OmegaConf.resolve(cfg)
    from silkfire.config_schema import check as check_schema

    check_schema(cfg, root / CONFIG_DIR)  # a key no conf/ file declares (a `+key=` typo, an experiment file's) fails here
    from silkfire.models.config import resolve_checkpoint_files

    resolve_checkpoint_files(cfg)  # a hub checkpoint: DVC hashes its folder in the HF cache
    from silkfire.runtime import check

    check(cfg)  # runtime.device=cuda without a GPU (or a bad runtime key) fails here, at config time
    return cfg


def write_params(overrides: Sequence[str] = (), root: Path | None = None,
                 check: Callable[[DictConfig], None] | None = None) -> tuple[DictConfig, bool]:
    """Compose the config and write it to params.yaml. Returns (config, whether the file changed).

    ``check`` (e.g. silkfire.stages.runner.check_config) sees the composed config first: a config it refuses is
    never written. The file is rewritten only when its content changes, so an unchanged config leaves DVC's param
    hashes (and every stage cache) untouched.
    """
    root = root or project_root()
    cfg = compose(overrides, root)
    if check is not None:
        check(cfg)
    text = OmegaConf.to_yaml(cfg)  # the same serialisation DVC's compose_and_dump uses
    target = root / PARAMS_FILE
    changed = not target.is_file() or target.read_text(encoding="utf-8") != text
    if changed:
        target.write_text(text, encoding="utf-8")
    return cfg, changed


def load_params(root: Path | None = None) -> DictConfig:
    """Load params.yaml (what DVC stages read)."""
    root = root or project_root()
    path = root / PARAMS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `silkfire params` to compose it from conf/")
    cfg = OmegaConf.load(path)
    assert isinstance(cfg, DictConfig)
    return cfg


def flatten(cfg: DictConfig | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested config into dotted keys (MLflow params)."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, Any] = {}
    for key, value in container.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat
