"""The README's results block is `silkfire report`'s rendering of the committed report, not typed numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from silkfire.results import readme_block, readme_block_matches, render_markdown, replace_readme_block

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "results" / "seeds" / "report.json"
# README block name -> the committed report it shows, and the command that writes both
BLOCKS = {
    None: ("seeds", "silkfire report --sweep seeds --sweep foundation-seeds --out results/seeds --readme README.md "
                    "(or `make seeds`)"),
    "foundation": ("foundation", "silkfire report --sweep foundation-2000 --out results/foundation --readme "
                                 "README.md --block foundation"),
}


@pytest.mark.parametrize("block", list(BLOCKS), ids=[str(name) for name in BLOCKS])
def test_readme_results_block_equals_the_committed_report(block: str | None) -> None:
    folder, command = BLOCKS[block]
    path = ROOT / "results" / folder / "report.json"
    report = json.loads(path.read_text(encoding="utf-8"))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_block(readme, block) is not None, f"README.md lost its silkfire-report markers ({block})"
    assert readme_block_matches(readme, report, block), (
        f"README.md's results block {block or ''} differs from {path.relative_to(ROOT)}: regenerate it with "
        f"`{command}`, never by hand")


def test_named_blocks_are_rewritten_apart() -> None:
    report = json.loads(REPORT.read_text(encoding="utf-8"))
    text = ("a\n<!-- silkfire-report:begin -->\nold\n<!-- silkfire-report:end -->\nb\n"
            "<!-- silkfire-report:begin other -->\nold other\n<!-- silkfire-report:end other -->\n")
    fresh = replace_readme_block(text, report, "other")
    assert readme_block(fresh) == "\nold\n" and readme_block_matches(fresh, report, "other")


def test_committed_report_md_is_the_rendering_of_its_json() -> None:
    report = json.loads(REPORT.read_text(encoding="utf-8"))
    assert (REPORT.parent / "report.md").read_text(encoding="utf-8") == render_markdown(report)


def test_the_report_says_where_and_when_it_was_measured() -> None:
    report = json.loads(REPORT.read_text(encoding="utf-8"))
    text = render_markdown(report)
    cpus = report["machine"]["cpu"]  # one entry per distinct CPU the runs saw
    assert cpus and all(cpu in text for cpu in cpus)
    assert report["measured"]["start"][:10] in text  # the date
    assert len(report["seeds"]) >= 3  # issue 14: at least three whole-pipeline seeds
