"""Each stage's code dependencies in dvc.yaml are exactly its import closure inside `silkfire` (issue 15).

A stage re-runs when, and only when, code it can execute changes: the files of every `silkfire` module the stage
module imports, directly or through others, lazy imports inside functions included (grimp, import-linter's graph),
plus the ``__init__.py`` of every package on the way (Python runs them on import). The orchestration that calls a
stage (`silkfire stage`, silkfire.stages.runner, the CLI) is not part of it: it decides *when* a stage runs, not
what it computes.

    python -m silkfire.stages.code_deps            # exit 1 and name the stages whose dvc.yaml deps are stale
    python -m silkfire.stages.code_deps --write    # rewrite them (`make dvc-deps`)

In a dvc.yaml ``deps`` list, the code entries are the ones under ``src/silkfire/``; they follow the marker comment
``# code: the stage's import closure``, and everything else (data, the model checkpoint's files) is left as written.
tests/stages/test_dvc_pipeline.py fails when a committed dvc.yaml differs from what ``--write`` would make.
grimp comes with the `dev` extra (import-linter); stages never import this module.
"""

from __future__ import annotations

import argparse
import re
import sys
from functools import cache
from pathlib import Path

PACKAGE = "silkfire"
MARKER = "# code: the stage's import closure (python -m silkfire.stages.code_deps --write)"
_ITEM = re.compile(r"^(?P<indent>\s+)- (?P<value>\S+)")


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


def render(text: str, deps_of: dict[str, list[str]]) -> str:
    """``text`` (a dvc.yaml) with the code deps of every stage in ``deps_of`` replaced by the given lists."""
    lines = text.splitlines()
    out: list[str] = []
    stage: str | None = None
    in_deps = False
    indent = ""
    for line in lines:
        stage_match = re.match(r"^  (\w+):\s*$", line)
        if stage_match:
            stage, in_deps = stage_match.group(1), False
        elif re.match(r"^    deps:\s*$", line):
            in_deps = stage in deps_of
            out.append(line)
            continue
        elif in_deps and (item := _ITEM.match(line)):
            indent = item.group("indent")
            if item.group("value").startswith(f"src/{PACKAGE}/"):
                continue  # an old code entry: replaced below
            out.append(line)
            continue
        elif in_deps and line.strip() == MARKER:
            continue
        elif in_deps and not line.startswith("      "):  # the deps list ended: write the code entries here
            out.extend([f"{indent}{MARKER}"] + [f"{indent}- {path}" for path in deps_of[stage]])  # type: ignore[index]
            in_deps = False
        out.append(line)
    return "\n".join(out) + "\n"


def dvc_files(root: Path) -> dict[Path, list[str]]:
    """Every dvc.yaml of the pipeline and the stages it declares."""
    from silkfire.stages import ALL_STAGES, dvc_file

    files: dict[Path, list[str]] = {}
    for stage in ALL_STAGES:
        files.setdefault(root / dvc_file(stage), []).append(stage)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the code deps of every dvc.yaml")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="project root (default: here)")
    args = parser.parse_args(argv)
    stale = []
    for path, stages in dvc_files(args.root).items():
        text = path.read_text(encoding="utf-8")
        fresh = render(text, {stage: code_deps(stage, args.root) for stage in stages})
        if fresh != text:
            stale.append(path.relative_to(args.root).as_posix())
            if args.write:
                path.write_text(fresh, encoding="utf-8")
    if stale and not args.write:
        print(f"stale code deps in {', '.join(stale)}: run `make dvc-deps`", file=sys.stderr)
        return 1
    print(f"rewrote {', '.join(stale)}" if stale else "code deps are up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
