"""Open the MLflow UI of a project's store in headless Chromium, as a person would, with no network.

    python benchmarks/ui_check.py [--root .] [--out reports/ui] [--chromium chromium]

Starts `mlflow ui` on the project's store (a free port on 127.0.0.1), then for each page renders it in headless
Chromium (Debian's `chromium` package; no Playwright download needed), saves a screenshot under --out and checks
the rendered DOM:

- the runs view (`#/experiments/<id>/runs?workflowType=machine_learning`) lists the pipeline runs by name;
- the newest parent run's page shows its headline metrics (`evaluate.mme.sft.perception`, ...) and description;
- the SFT stage run's page shows its curves (`train/loss`);
- the registry lists silkfire-sft, and the champion version's page shows its signature (2 inputs: image,
  question) and its promotion decision;
- the data gate's self-contained HTML report (reports/validate/report.html) renders from the file;
- `dvc plots show`'s page (written under --out) embeds the training curves' PNGs, with no warning.

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
import tempfile
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


# MLflow 3's one-time promotion over the registry page and its assistant panel, which opens itself on a first
# visit and covers a third of the page (the UI's own localStorage keys, `<key>_v<version>` = JSON): dismissed
# as a person would have dismissed them once, so the screenshots show the pages.
DISMISSED = {"_mlflow_model_registry_promo_modal_dismissed_v1": "true",
             "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true", "mlflow.assistant.panelOpen_v1": "false"}


def _flags(chromium: str, wait_ms: int, profile: Path) -> list[str]:
    return [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--window-size=1600,1000", f"--virtual-time-budget={wait_ms}", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", f"--user-data-dir={profile}"]


def prime_local_storage(chromium: str, port: int, profile: Path, items: dict[str, str]) -> None:
    """Write `items` into the browser profile's localStorage for http://127.0.0.1:PORT (the origin the MLflow UI
    will have): a one-page server on that port, rendered once, before `mlflow ui` takes the port."""
    import http.server
    import json
    import threading

    page = ("<script>" + "".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)});" for k, v in items.items())
            + "</script>ok").encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 -- the http.server protocol
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", port), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        subprocess.run([*_flags(chromium, 2000, profile), "--dump-dom", f"http://127.0.0.1:{port}/"],
                       capture_output=True, timeout=120, check=False)
    finally:
        server.shutdown()
        server.server_close()


def render(chromium: str, url: str, screenshot: Path, wait_ms: int, profile: Path) -> str:
    """The page's DOM after its scripts ran for `wait_ms` of virtual time; a screenshot beside it."""
    flags = _flags(chromium, wait_ms, profile)
    subprocess.run([*flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=180, check=False)
    done = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=False)
    return done.stdout


def dvc_plots(root: Path, out: Path) -> Path | None:
    """`dvc plots show -o OUT` in the project: the page a user opens, or None when DVC wrote none (or warned)."""
    done = subprocess.run([str(Path(sys.executable).with_name("dvc")), "plots", "show", "-o", str(out)], cwd=root,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0 or done.stderr.strip():
        print(f"dvc plots show: exit {done.returncode}: {done.stderr.strip()}", file=sys.stderr)
        return None
    return out / "index.html"


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
        pages.append(("champion version", model_url("silkfire-sft", champion.version, base),
                      ["Inputs (2)", "PROMOTED"]))  # the signature (image, question) and the decision
    except Exception:  # noqa: BLE001 -- no champion yet: nothing to show
        pass

    gate_report = root / "reports" / "validate" / "report.html"  # self-contained: renders with no network
    if gate_report.is_file():
        pages.append(("gate report", gate_report.as_uri(), ["Data quality gate"]))
    plots = dvc_plots(root, out / "dvc_plots")  # the training curves' PNGs render offline
    failed_plots = None if plots is not None else ("dvc plots", "(dvc plots show failed or warned)", None,
                                                   ["metrics/curves/sft.png"], ["dvc plots show: see stderr"])
    if plots is not None:
        pages.append(("dvc plots", plots.as_uri(), ["metrics/curves/sft.png"]))

    profile = Path(tempfile.mkdtemp(prefix="ui-check-chromium-"))
    results = [] if failed_plots is None else [failed_plots]
    server = None
    try:
        prime_local_storage(args.chromium, port, profile, DISMISSED)
        server = start_ui(tracking_uri(root), port)
        for index, (name, url, expected) in enumerate(pages, 1):
            shot = out / f"{index:02d}-{name.replace(' ', '-')}.png"
            dom = render(args.chromium, url, shot, args.wait_ms, profile)
            missing = [text for text in expected if _needle(text) not in dom]
            results.append((name, url, shot, expected, missing))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)

    lines = ["# MLflow UI check (headless Chromium, no network)", "",
             "| page | expected on the page | result | screenshot |", "|---|---|---|---|"]
    for name, url, shot, expected, missing in results:
        verdict = "ok" if not missing else "MISSING " + ", ".join(missing)
        picture = "-" if shot is None else f"[{shot.name}]({shot.name})"
        lines.append(f"| [{name}]({url}) | {', '.join(expected)} | {verdict} | {picture} |")
    text = "\n".join(lines) + "\n"
    (out / "README.md").write_text(text, encoding="utf-8")
    print(text)
    return 0 if all(not missing for *_, missing in results) else 1


if __name__ == "__main__":
    sys.exit(main())
