"""A data-quality gate's verdict and reports on the active MLflow run (one implementation for every gate stage)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

GATE_TAG = "silkfire.gate"  # "passed" | "failed"; `silkfire lineage` reads it back
POLICY_TAG = "silkfire.gate_policy"  # what the gate does with bad rows, in words (a bare "fail" read as a verdict)
POLICY_WORDS = {"fail": "stop the run on any bad row", "filter": "quarantine bad rows, keep the rest"}


HTML_REPORT = "report.html"
_STYLE = ("body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}"
          "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
          "th{background:#f3f3f3}code{background:#f5f5f5;padding:0 .2em}pre{background:#f5f5f5;padding:.6em;"
          "overflow:auto}h1{font-size:1.5em}")


def write_html_report(folder: Path) -> Path | None:
    """`report.md` of a gate as one self-contained HTML page (inline style, no scripts, no network: it renders
    where GX's Data Docs, which load their scripts from CDNs, stay blank). Returns its path (None: no report)."""
    import html

    from markdown_it import MarkdownIt  # rich's markdown parser, installed with it

    source = folder / "report.md"
    if not source.is_file():
        return None
    text = source.read_text(encoding="utf-8")
    title = html.escape(text.splitlines()[0].lstrip("# ").strip() if text else "Data quality gate")
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{_STYLE}</style>"
            f"</head><body>{body}</body></html>\n")
    target = folder / HTML_REPORT
    target.write_text(page, encoding="utf-8")
    return target


def log_gate_reports(folder: Path, artifact_path: str = "validation") -> None:
    """Log a gate's report folder (text/JSON reports, a self-contained HTML report, Data Docs), leaving out the
    clean copies: they are as big as the data, and DVC already versions them."""
    import mlflow

    write_html_report(folder)
    for item in sorted(folder.iterdir()):
        if item.name == "clean":
            continue
        if item.is_dir():
            mlflow.log_artifacts(str(item), artifact_path=f"{artifact_path}/{item.name}")
        else:
            mlflow.log_artifact(str(item), artifact_path=artifact_path)


def tag_gate(passed: bool, policy: str, kind: str | None = None) -> None:
    """The verdict as run tags; with several gates in one stage each kind also gets its own tag."""
    import mlflow

    verdict = "passed" if passed else "failed"
    words = f"{policy}: {POLICY_WORDS[policy]}" if policy in POLICY_WORDS else policy
    mlflow.set_tags({GATE_TAG: verdict, POLICY_TAG: words} | ({f"{GATE_TAG}.{kind}": verdict} if kind else {}))


def run_file_gate(kind: str, path: Path, cfg: Any, root: Path, reports: Path, image_root: Path) -> dict[str, Any]:
    """Run one file gate (``silkfire validate <kind>``) on ``path``, write its report and verdict under ``reports``,
    publish them to the active MLflow run, raise GateFailed on failure; returns its numeric summary.

    Shared by the `validate_feedback` (kind vlfeedback) and `pairs` (kind pairs) stages."""
    from silkfire.io import write_json
    from silkfire.quality import GateFailed, QualityConfig
    from silkfire.quality.cli import validate
    from silkfire.quality.verdict import record_verdict

    result = validate(kind, path, QualityConfig.from_mapping(cfg.quality), reports, image_root)
    (reports / "report.md").write_text(result.to_markdown(), encoding="utf-8")
    write_json(reports / "failures.json", result.failure_rows())
    record_verdict(reports, [result], root, reports.name)  # what `dpo` checks (silkfire.quality.verdict)
    log_gate_reports(reports)
    tag_gate(result.success, str(result.summary().get("policy", "")), kind)
    if not result.success:
        raise GateFailed(result)
    return {k: v for k, v in result.summary().items() if not isinstance(v, str)}
