"""The import graph stays clean (issue 15, "layers"): pyproject.toml's import-linter contracts hold (the library
imports no stage and no orchestration; the layers; no stage imports another) and no
silkfire module imports itself back through others. grimp (import-linter's graph) counts every import, the lazy
ones inside functions included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "silkfire"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(*args: str) -> subprocess.CompletedProcess[str]:
    # run from the root: lint-imports puts the working directory on sys.path, where flows/ lives
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_import_contracts_hold() -> None:
    result = lint_imports()
    assert result.returncode == 0, f"an import contract of pyproject.toml is broken:\n{result.stdout}{result.stderr}"
    assert "0 broken" in result.stdout


def test_a_broken_contract_fails_the_check(tmp_path: Path) -> None:
    """The check bites: a contract the code breaks (every stage imports silkfire.io or the artefact paths) fails."""
    config = tmp_path / ".importlinter"
    config.write_text("[importlinter]\nroot_packages =\n    silkfire\n\n"
                      "[importlinter:contract:broken]\nname = stages may not read artefact paths\ntype = forbidden\n"
                      "source_modules =\n    silkfire.stages\nforbidden_modules =\n    silkfire.artefacts\n",
                      encoding="utf-8")
    result = lint_imports("--config", str(config))
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout and "silkfire.stages" in result.stdout


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle_among_silkfire_modules() -> None:
    graph = grimp.build_graph("silkfire", cache_dir=None)
    edges = {module: set(graph.find_modules_directly_imported_by(module)) for module in graph.modules}
    cycles = strongly_connected(edges)
    details = []
    for component in cycles:
        members = set(component)
        for importer in component:
            for imported in sorted(edges[importer] & members):
                lines = [item["line_number"] for item in graph.get_import_details(importer=importer, imported=imported)]
                details.append(f"  {importer} -> {imported} (line {', '.join(map(str, lines))})")
    assert not cycles, ("import cycles among silkfire modules (move the shared piece to the module that owns it):\n"
                        + "\n".join(details))


def test_tarjan_finds_a_cycle() -> None:
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_every_source_folder_is_a_regular_package() -> None:
    """grimp (and so every contract above) skips a folder without __init__.py: its imports would go unchecked."""
    missing = sorted(str(folder.relative_to(ROOT)) for folder in [SRC, *SRC.rglob("*")]
                     if folder.is_dir() and folder.name != "__pycache__" and any(folder.glob("*.py"))
                     and not (folder / "__init__.py").is_file())
    assert not missing, f"folders of silkfire modules without __init__.py: {missing}"


# Names that say what they hold (issue 15, item 6). A stage module is named for its stage and a quality module for
# the data kind it gates (quality/pairs.py gates stages/pairs.py's file); each package may have its own config,
# test helpers, command line and published-records reader. Any other library module name is used once, so
# "generate.py" or "oracle.py" means one thing.
PER_PACKAGE = {"__init__", "config", "testing", "cli", "records"}
NAMED_FOR = ("stages", "quality")


def test_library_module_names_are_unique() -> None:
    seen: dict[str, list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC)
        if path.stem in PER_PACKAGE or relative.parts[0] in NAMED_FOR:
            continue
        seen.setdefault(path.stem, []).append(str(relative))
    repeated = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not repeated, f"library modules sharing a name (give each a name for what it holds): {repeated}"
    assert "answers" in seen and "oracle_judge" in seen and "oracle_teacher" in seen  # the renamed ones are found
