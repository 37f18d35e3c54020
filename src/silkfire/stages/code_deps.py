"""Each stage's code dependencies in dvc.yaml are exactly its import closure inside `silkfire` (issue 15).

A stage re-runs when, and only when, code it can execute changes: the files of every `silkfire` module the stage
module imports, directly or through others, lazy imports inside functions included (grimp, import-linter's graph),
plus the ``__init__.py`` of every package on the way (Python runs them on import). The orchestration that calls a
stage (`silkfire stage`, silkfire.stages.runner, the CLI) is not part of it: it decides *when* a stage runs, not
what it computes.

silkfire.stages.dvc_yaml writes these lists into the generated dvc.yaml files (`make dvc-yaml`), after each
stage's data deps. grimp comes with the `dev` extra (import-linter); stages never import this module.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

PACKAGE = "silkfire"


@cache
def _graph():  # type: ignore[no-untyped-def]
    import grimp

    return grimp.build_graph(PACKAGE, cache_dir=None)


def module_file(module: str, src: Path) -> str:
    """The source file of ``module``, relative to the project root (``src`` is its ``src/`` folder)."""
    path = src / Path(*module.split("."))
    target = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return target.relative_to(src.parent).as_posix()


def import_closure(module: str) -> set[str]:
    """``module``, every silkfire module it imports directly or indirectly, and their parent packages."""
    graph = _graph()
    found: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current in found:
            continue
        found.add(current)
        todo.extend(graph.find_upstream_modules(current) - found)
        parts = current.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # packages run their __init__ on import
    return found


def code_deps(stage: str, root: Path) -> list[str]:
    """The sorted files (root-relative) a stage's dvc.yaml entry must depend on."""
    return sorted(module_file(module, root / "src") for module in import_closure(f"{PACKAGE}.stages.{stage}"))
