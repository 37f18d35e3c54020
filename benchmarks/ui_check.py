"""Open the MLflow UI of a project's store in headless Chromium, as a person would, with no network.

    python benchmarks/ui_check.py [--root .] [--out reports/ui] [--chromium chromium]

Starts `mlflow ui` on the project's store (a free port on 127.0.0.1), then for each page renders it in headless
Chromium (Debian's `chromium` package; no Playwright download needed), saves a screenshot under --out and checks
the rendered DOM:

- the runs view (`#/experiments/<id>/runs?workflowType=machine_learning`) lists the pipeline runs by name;
- the newest parent run's page shows its headline metrics (`evaluate.mme.sft.perception`, ...) and description;
- the SFT stage run's page shows its curves (`train/loss`);
- the registry lists silkfire-sft, and the champion version's page shows its signature (`question`);
- the data gate's self-contained HTML report (reports/validate/report.html) renders from the file.

Exit 0 when every check passes; the table of pages, checks and screenshots is printed and written to
<out>/README.md. Needs a store with at least one pipeline run (`make run`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ui(uri: str, port: int) -> subprocess.Popen:
    import httpx

    command = [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", uri,
               "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            break
        time.sleep(1)
    server.kill()
    raise SystemExit("mlflow ui did not start")


def render(chromium: str, url: str, screenshot: Path, wait_ms: int) -> str:
    """The page's DOM after its scripts ran for `wait_ms` of virtual time; a screenshot beside it."""
    flags = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--window-size=1600,1000", f"--virtual-time-budget={wait_ms}", "--no-first-run",
             "--disable-background-networking", "--disable-component-update"]
    subprocess.run([*flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=180, check=False)
    done = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=False)
    return done.stdout


def _needle(expected: str) -> str:
    """What to look for in the DOM: the text itself, or for "section X" a heading whose whole text is X."""
    return f">{expected.removeprefix('section ')}<" if expected.startswith("section ") else expected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--out", type=Path, default=None, help="default: <root>/reports/ui")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "")
    parser.add_argument("--wait-ms", type=int, default=20000, help="virtual time each page gets to load its data")
    args = parser.parse_args(argv)
    if not args.chromium:
        raise SystemExit("no chromium found: apt-get install chromium (or pass --chromium)")
    root = args.root.resolve()
    out = (args.out or root / "reports" / "ui").resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    from mlflow import MlflowClient

    from silkfire.config import load_params
    from silkfire.tracking.store import configure, model_url, run_url, runs_view_url, tracking_uri

    experiment_id = configure(root, load_params(root).tracking.experiment_name)
    client = MlflowClient()
    parents = client.search_runs([experiment_id], "tags.`silkfire.kind` = 'pipeline'",
                                 order_by=["attributes.start_time DESC"])
    if not parents:
        raise SystemExit("no pipeline run in the store yet: `make run` first")
    parent = parents[0]
    stages = {run.data.tags.get("silkfire.stage"): run for run in client.search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")}
    sft = stages.get("sft")
    while sft is not None and sft.data.tags.get("silkfire.produced_by"):  # cached: the run that trained it
        sft = client.get_run(sft.data.tags["silkfire.produced_by"])
    headline = sorted(key for key in parent.data.metrics if "." in key)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    pages: list[tuple[str, str, list[str]]] = [
        ("runs view", runs_view_url(experiment_id, base), [run.info.run_name for run in parents[:3]]),
        ("parent run", run_url(experiment_id, parent.info.run_id, base), [parent.info.run_name, *headline[:3]]),
    ]
    if sft is not None:
        pages.append(("sft charts", run_url(experiment_id, sft.info.run_id, base, "model-metrics"),
                      ["section train", "section eval"]))  # chart sections: one per metric prefix
    pages.append(("registry", f"{base}/#/models", ["silkfire-sft"]))
    try:
        champion = client.get_model_version_by_alias("silkfire-sft", "champion")
        pages.append(("champion version", model_url("silkfire-sft", champion.version, base), ["question"]))
    except Exception:  # noqa: BLE001 -- no champion yet: nothing to show
        pass

    gate_report = root / "reports" / "validate" / "report.html"  # self-contained: renders with no network
    if gate_report.is_file():
        pages.append(("gate report", gate_report.as_uri(), ["Data quality gate"]))

    server = start_ui(tracking_uri(root), port)
    results = []
    try:
        for index, (name, url, expected) in enumerate(pages, 1):
            shot = out / f"{index:02d}-{name.replace(' ', '-')}.png"
            dom = render(args.chromium, url, shot, args.wait_ms)
            missing = [text for text in expected if _needle(text) not in dom]
            results.append((name, url, shot, expected, missing))
    finally:
        server.terminate()
        server.wait(timeout=30)

    lines = ["# MLflow UI check (headless Chromium, no network)", "",
             "| page | expected on the page | result | screenshot |", "|---|---|---|---|"]
    for name, url, shot, expected, missing in results:
        verdict = "ok" if not missing else "MISSING " + ", ".join(missing)
        lines.append(f"| [{name}]({url}) | {', '.join(expected)} | {verdict} | [{shot.name}]({shot.name}) |")
    text = "\n".join(lines) + "\n"
    (out / "README.md").write_text(text, encoding="utf-8")
    print(text)
    return 0 if all(not missing for *_, missing in results) else 1


if __name__ == "__main__":
    sys.exit(main())
