"""The README's results block is `silkfire report`'s rendering of the committed report, not typed numbers."""

from __future__ import annotations

import json
from pathlib import Path

from silkfire.results import readme_block, readme_block_matches, render_markdown

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "results" / "seeds" / "report.json"


def test_readme_results_block_equals_the_committed_report() -> None:
    report = json.loads(REPORT.read_text(encoding="utf-8"))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_block(readme) is not None, "README.md lost its silkfire-report markers"
    assert readme_block_matches(readme, report), (
        "README.md's results block differs from results/seeds/report.json: regenerate it with "
        "`silkfire report --sweep seeds --sweep foundation-seeds --out results/seeds --readme README.md` "
        "(or `make seeds`), never by hand")


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
