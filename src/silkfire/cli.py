"""`silkfire`: run the pipeline, run one stage, score benchmark files, serve a schedule, open the MLflow UI.

Heavy libraries are imported inside the commands that need them, so `silkfire score ...` starts fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from silkfire.flow import FLOW_MODULE, load_flow_module  # noqa: F401 -- importable from here too (tests, docs)

DEFAULT_CRON = "0 2 * * *"  # nightly at 02:00


def _holding_workspace(what: str):  # noqa: ANN202 -- a context manager
    """The workspace lock, taken before anything heavy is imported or started (a refusal is one quick line)."""
    from silkfire.config import project_root
    from silkfire.workspace import workspace_lock

    return workspace_lock(project_root(), what=what)


def _cmd_run(args: argparse.Namespace) -> int:
    with _holding_workspace("silkfire run"):  # the flow joins this lock
        flows = load_flow_module()
        flows.pipeline(overrides=list(args.overrides), push_to_remote=not args.no_push)
    return 0


def _cmd_rounds_run(args: argparse.Namespace) -> int:
    from silkfire.rounds import RoundsError, run_rounds, show

    try:
        run_rounds(list(args.overrides), total=args.rounds, more=args.more, name=args.name)
    except RoundsError as error:
        print(f"silkfire rounds: {error}", file=sys.stderr)
        return 2
    show(args.name)
    return 0


def _cmd_rounds_show(args: argparse.Namespace) -> int:
    from silkfire.rounds import RoundsError, show

    try:
        show(args.name)
    except RoundsError as error:
        print(f"silkfire rounds: {error}", file=sys.stderr)
        return 2
    return 0


def _cmd_stage(args: argparse.Namespace) -> int:
    with _holding_workspace(f"silkfire stage {args.name}"):  # under `silkfire run` / a sweep: joins their lock
        from silkfire.stages.runner import run_stage

        try:
            run_stage(args.name)
        except Exception as error:
            # A failed gate carries a readable report, a training stage refusing unvetted data says why: no traceback.
            if type(error).__name__ in ("GateFailed", "GateNotPassed"):
                print(str(error), file=sys.stderr)
                return 1
            raise
    return 0


def _cmd_params(args: argparse.Namespace) -> int:
    with _holding_workspace("silkfire params"):  # never rewrite params.yaml under a running stage
        from silkfire.config import write_params
        from silkfire.stages import ALL_STAGES
        from silkfire.stages.runner import ConfigError, check_config

        try:  # every stage's settings: params.yaml serves `dvc repro` of any of them
            _, changed = write_params(list(args.overrides), check=lambda cfg: check_config(cfg, ALL_STAGES))
        except ConfigError as error:
            print(f"silkfire params: {error}", file=sys.stderr)
            return 2
    print("params.yaml " + ("updated" if changed else "unchanged"))
    return 0


def _parse_groups(pairs: Sequence[str]) -> dict[str, str]:
    groups: dict[str, str] = {}
    for pair in pairs:
        category, sep, group = pair.partition("=")
        if not sep or group not in ("perception", "cognition"):
            raise SystemExit(f"--group expects CATEGORY=perception|cognition, got {pair!r}")
        groups[category] = group
    return groups


def _cmd_score(args: argparse.Namespace) -> int:
    """Exit 0 with the scores as JSON; 2 with one ``error:`` message when the input is wrong (every bad record
    named by file, line/record and field; an unreadable or empty file; a bad --group)."""
    from silkfire.io import RecordFileError

    try:
        if args.benchmark == "mme":
            from silkfire.eval.mme import score_mme_file

            try:
                groups = _parse_groups(args.group)
            except SystemExit as error:  # a usage error: exit 2 like the others
                print(f"error: {error}", file=sys.stderr)
                return 2
            result = score_mme_file(args.file, extra_groups=groups)
        elif args.benchmark == "mmhal":
            from silkfire.eval.mmhal import score_mmhal_file

            result = score_mmhal_file(args.file)
        elif args.benchmark == "fire":
            from silkfire.fire.metrics import score_fire_file

            result = score_fire_file(args.file, threshold=args.threshold, baseline=args.baseline)
        else:  # pragma: no cover - argparse restricts choices
            raise SystemExit(f"unknown benchmark {args.benchmark}")
    except (RecordFileError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # unreadable (permissions, a folder, I/O)
        print(f"error: {args.file}: cannot read: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    """A checkpoint on a published benchmark file (silkfire.eval.benchmark): exit 0 with the scores as JSON; 1 when
    the file fails its gate (the report on stderr); 2 when the input, the model or an option is wrong."""
    from silkfire.eval.benchmark import EvalGateFailed, EvalOptions, run_eval
    from silkfire.io import RecordFileError
    from silkfire.models.loading import ModelLoadError

    try:
        judge = None
        if args.judge_url or args.judge_model:
            from silkfire.llm.client import ClientConfig

            if not (args.judge_url and args.judge_model):
                raise ValueError("--judge-url and --judge-model go together")
            key = None if args.judge_key_env.lower() == "none" else args.judge_key_env
            judge = ClientConfig(base_url=args.judge_url, model=args.judge_model, api_key_env=key)
        options = EvalOptions(
            model=args.model, out=args.out, image_root=args.image_root, max_items=args.max_items,
            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, dtype=args.dtype, device=args.device,
            groups=_parse_groups(args.group), judge=judge, role=args.role, teacher=args.teacher,
            teacher_instruction=args.teacher_instruction, max_turns=args.max_turns, stop_score=args.stop_score,
            seed=args.seed, overrides=list(args.overrides), progress=not args.quiet)
        result = run_eval(args.benchmark, args.file, options)
    except EvalGateFailed as error:
        print(str(error), file=sys.stderr)
        return 1
    except SystemExit as error:  # a bad --group
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (RecordFileError, ModelLoadError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


def _cmd_pairs(args: argparse.Namespace) -> int:
    """Exit 0 with the counts as JSON; 2 with one ``error:`` message listing every bad record (file, line/record,
    field), an unreadable or empty input, or an output that cannot be written (nothing is written then)."""
    from silkfire.vlfeedback.pair_rule import build_pairs_file
    from silkfire.vlfeedback.records import FeedbackFormatError

    try:
        counts = build_pairs_file(args.file, args.out, args.min_margin, args.max_pairs_per_prompt)
    except (FeedbackFormatError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {error.filename or args.file}: {error.strerror or error}", file=sys.stderr)
        return 2
    shown = ["records", "pairs", "ties", "skipped"]
    shown += ["below_margin"] if args.min_margin else []
    shown += ["over_cap"] if args.max_pairs_per_prompt is not None else []
    shown += ["duplicates"] if counts["duplicates"] else []
    print(json.dumps({key: counts[key] for key in shown}))
    return 0


def _tracking_client():  # noqa: ANN202 -- MlflowClient, imported lazily
    from mlflow import MlflowClient

    from silkfire.config import load_params, project_root
    from silkfire.tracking.store import configure

    root = project_root()
    configure(root, load_params(root).tracking.experiment_name)
    return MlflowClient()


def _cmd_models(args: argparse.Namespace) -> int:
    from silkfire.tracking.inventory import list_models

    rows = list_models(_tracking_client())
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no registered models yet: `make run` registers silkfire-sft")
        return 0
    import shutil
    import textwrap

    width = max(80, min(shutil.get_terminal_size((120, 24)).columns, 160))
    print(f"{'model':<24} {'ver':>4}  {'aliases':<20} metrics (decision below)")
    for row in rows:
        metrics = " ".join(f"{k.split('.')[-1]}={v:g}" for k, v in row["metrics"].items()) or "-"
        print(f"{row['name']:<24} {row['version']:>4}  {','.join(row['aliases']) or '-':<20} {metrics}")
        if row["decision"]:  # wrapped at word boundaries, never cut: the whole decision is worth reading
            print(textwrap.fill(row["decision"], width=width, initial_indent=" " * 6 + "decision: ",
                                subsequent_indent=" " * 16, break_long_words=False, break_on_hyphens=False))
    return 0


def _cmd_lineage(args: argparse.Namespace) -> int:
    from silkfire.tracking.inventory import lineage, resolved_config

    try:
        facts = lineage(_tracking_client(), args.model)
        print(resolved_config(facts) if args.config else json.dumps(facts, indent=2))
    except LookupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from prefect import serve

    flows = load_flow_module()
    serve(flows.scheduled_deployment(args.cron, list(args.overrides), name=args.name))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from silkfire.sweeps import SweepError, markdown, run_sweep

    try:
        with _holding_workspace("silkfire sweep"):
            result = run_sweep(args.overrides, args.metric, mode=args.mode, targets=args.target, name=args.name)
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"\nsweep {result['name']} (MLflow run {result['parent_run_id']}):\n")
    print(markdown(result["points"]))
    return 1 if result["failed"] else 0


def _cmd_report(args: argparse.Namespace) -> int:
    """The results tables of one or more seed sweeps with CIs (silkfire.results): exit 0, or 2 naming what is
    missing."""
    from silkfire.results import PLATEAU_THRESHOLD, ReportError, build_report, replace_readme_block, write_report

    try:
        threshold = PLATEAU_THRESHOLD if args.plateau_threshold is None else args.plateau_threshold
        report = build_report(_tracking_client(), args.sweep, B=args.bootstrap, bootstrap_seed=args.bootstrap_seed,
                              progress=args.verbose, plateau_threshold=threshold)
        from silkfire.config import project_root

        paths = write_report(report, args.out or project_root() / "results" / args.sweep[0])
        if args.readme:
            args.readme.write_text(replace_readme_block(args.readme.read_text(encoding="utf-8"), report,
                                                        args.block), encoding="utf-8")
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(str(path) for path in [*paths.values(), *([args.readme] if args.readme else [])]))
    return 0


def ui_links(root: Path, host: str, port: int) -> str:
    """Where to click: MLflow 3 opens an experiment in its GenAI (traces) view, so link the runs table itself."""
    from silkfire.config import load_params
    from silkfire.tracking.store import configure, model_url, runs_view_url

    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    try:
        experiment_id = configure(root, load_params(root).tracking.experiment_name)
    except Exception as error:  # noqa: BLE001 -- no params.yaml yet, a store we cannot open: the UI still starts
        return f"open {base} (experiment unknown: {error})"
    return (f"runs:   {runs_view_url(experiment_id, base)}\n"
            f"models: {base}/#/models   (e.g. {model_url('silkfire-sft', 1, base)})")


def _cmd_ui(args: argparse.Namespace) -> int:
    from silkfire.config import project_root
    from silkfire.tracking.store import tracking_uri

    root = project_root()
    uri = tracking_uri(root)
    mlflow_cli = str(Path(sys.executable).with_name("mlflow"))  # the environment's, activated or not
    command = [mlflow_cli, "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    print(" ".join(command))
    print(ui_links(root, args.host, args.port), flush=True)
    os.execvp(command[0], command)
    return 0  # pragma: no cover


def build_parser() -> argparse.ArgumentParser:
    from silkfire.quality import cli as quality_cli  # light: imports only the gate's config

    parser = argparse.ArgumentParser(prog="silkfire", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline flow (Prefect) on the composed config")
    run.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. train.max_steps=50 experiment=smoke")
    run.add_argument("--no-push", action="store_true", help="do not push outputs to the DVC remote")
    run.set_defaults(func=_cmd_run)

    stage = sub.add_parser("stage", help="run one stage on params.yaml (what dvc.yaml calls)")
    stage.add_argument("name")
    stage.set_defaults(func=_cmd_stage)

    params = sub.add_parser("params", help="compose conf/ into params.yaml (as `dvc exp run` does)")
    params.add_argument("overrides", nargs="*")
    params.set_defaults(func=_cmd_params)

    validate = sub.add_parser("validate", help="run a data-quality gate on any file (exit 0 = passed)")
    quality_cli.add_arguments(validate)
    validate.set_defaults(func=quality_cli.run_args)

    score = sub.add_parser("score", help="score a predictions file with a benchmark's official rules")
    score.add_argument("benchmark", choices=["mme", "mmhal", "fire"])
    score.add_argument("file", type=Path)
    score.add_argument("--group", action="append", default=[], metavar="CATEGORY=GROUP",
                       help="declare the group (perception|cognition) of a category MME does not have")
    score.add_argument("--threshold", type=float, default=8,
                       help="fire: a turn is correct when its teacher score >= this (default 8)")
    score.add_argument("--baseline", type=Path, default=None,
                       help="fire: the baseline model's dialogues; adds AT_norm = AT / baseline AT")
    score.set_defaults(func=_cmd_score)

    evaluate = sub.add_parser("eval", help="answer and score a published benchmark file with any local checkpoint")
    evaluate.add_argument("benchmark", choices=["mme", "mmhal", "fire"])
    evaluate.add_argument("file", type=Path, help="mme: lmms-lab/MME parquet (file or folder of shards) or JSONL; "
                          "mmhal: response_template.json; fire: FIRE-test.json (FIRE-Bench)")
    evaluate.add_argument("--model", type=Path, required=True, help="a local model folder (save_pretrained)")
    evaluate.add_argument("--image-root", type=Path, default=None,
                          help="folder image paths resolve against; parquet images are extracted under it "
                               "(default: the file's folder)")
    evaluate.add_argument("--out", type=Path, default=None, help="default: reports/eval/<benchmark>/<file stem>")
    evaluate.add_argument("--max-items", type=int, default=None,
                          help="evaluate only this many (MME: questions, both of an image kept; FIRE: items)")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--max-new-tokens", type=int, default=None,
                          help="default: the benchmark's (MME 16, MMHal 1024, FIRE 160)")
    evaluate.add_argument("--dtype", default="auto",
                          help="auto (bfloat16 on a GPU that has it, else float32) | float32 | bfloat16 | float16")
    evaluate.add_argument("--device", default="auto", help="auto (the GPU when there is one) | cpu | cuda | cuda:N")
    evaluate.add_argument("--group", action="append", default=[], metavar="CATEGORY=GROUP",
                          help="mme: the group (perception|cognition) of a category MME does not have")
    evaluate.add_argument("--judge-url", default=None, help="mmhal: OpenAI-compatible endpoint of the 0-6 judge")
    evaluate.add_argument("--judge-model", default=None, help="mmhal: the judge model's name")
    evaluate.add_argument("--judge-key-env", default="OPENAI_API_KEY",
                          help="mmhal: environment variable holding the judge's key ('none': no key)")
    evaluate.add_argument("--role", choices=["student", "teacher"], default="student",
                          help="fire: the model writes the student's (refined answers) or the teacher's turns")
    evaluate.add_argument("--teacher", type=Path, default=None,
                          help="fire: a trained teacher folder; adds free dialogue (AT, ADR, ATR, RR)")
    evaluate.add_argument("--teacher-instruction", choices=["fire", "short"], default="fire",
                          help="fire: the scoring instruction a model teacher is prompted with")
    evaluate.add_argument("--max-turns", type=int, default=5, help="fire free dialogue: student turns at most")
    evaluate.add_argument("--stop-score", type=float, default=8.0, help="fire: a score >= this is correct")
    evaluate.add_argument("--seed", type=int, default=0, help="fire: the draw of --max-items items")
    evaluate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="a quality gate override, e.g. --set mme.policy=filter")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate.set_defaults(func=_cmd_eval)

    pairs = sub.add_parser("pairs", help="build VLFeedback preference pairs from an annotated file")
    pairs.add_argument("file", type=Path, help="VLFeedback records (JSONL or JSON list, either layout)")
    pairs.add_argument("--out", type=Path, required=True, help="pairs JSONL to write")
    pairs.add_argument("--min-margin", type=float, default=0.0, help="keep pairs whose score gap exceeds this")
    pairs.add_argument("--max-pairs-per-prompt", type=int, default=None)
    pairs.set_defaults(func=_cmd_pairs)

    models = sub.add_parser("models", help="list registered model versions with aliases and key metrics")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    models.set_defaults(func=_cmd_models)

    lineage_cmd = sub.add_parser("lineage", help="where a registered model came from (commit, data, gate, config)")
    lineage_cmd.add_argument("model", help="NAME@ALIAS, NAME/VERSION or NAME (latest), e.g. silkfire-sft@champion")
    lineage_cmd.add_argument("--config", action="store_true", help="print the resolved config (params.yaml) only")
    lineage_cmd.set_defaults(func=_cmd_lineage)

    serve = sub.add_parser("serve", help="serve a scheduled (cron) deployment of the pipeline")
    serve.add_argument("overrides", nargs="*")
    serve.add_argument("--cron", default=DEFAULT_CRON, help=f"cron schedule (default {DEFAULT_CRON!r})")
    serve.add_argument("--name", default="silkfire-nightly")
    serve.set_defaults(func=_cmd_serve)

    sweep = sub.add_parser("sweep", help="sweep params: one DVC experiment + MLflow child run per point, a plot")
    sweep.add_argument("overrides", nargs="+",
                       help="Hydra overrides; key=a,b,c or range() is swept, others are fixed, e.g. "
                            "train.learning_rate=1e-3,2e-3 experiment=smoke")
    sweep.add_argument("--metric", required=True,
                       help="FILE.KEY of a metrics/FILE.json to plot and choose the best point on: a validation "
                            "figure, e.g. evaluate.val.mme.sft.perception")
    sweep.add_argument("--mode", choices=["dvc", "flow"], default="dvc",
                       help="dvc: `dvc exp run -S` per point (listed by `dvc exp show`); flow: the Prefect flow")
    sweep.add_argument("--target", action="append", default=[],
                       help="dvc mode: what `dvc exp run` reproduces (default dvc.yaml), e.g. pipelines/fire/dvc.yaml")
    sweep.add_argument("--name", default=None, help="sweep name; DVC experiments are NAME-0, NAME-1, ...")
    sweep.set_defaults(func=_cmd_sweep)

    report = sub.add_parser("report", help="results tables with CIs of seed sweeps (report.json/.md/.png)")
    report.add_argument("--sweep", required=True, action="append",
                        help="the sweep's --name; repeat to merge sweeps into one report (a seed in two: its newest "
                             "finished run)")
    report.add_argument("--out", type=Path, default=None, help="default: results/SWEEP (the first --sweep)")
    report.add_argument("--readme", type=Path, default=None, help="rewrite this file's silkfire-report block")
    report.add_argument("--block", default=None,
                        help="with --readme: the named block (<!-- silkfire-report:begin NAME -->) of several")
    report.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates B (default 2000)")
    report.add_argument("--bootstrap-seed", type=int, default=0)
    report.add_argument("--plateau-threshold", type=float, default=None,
                        help="val MME-style perception at which SFT has left the constant-answer plateau "
                             "(default 400: twice the constant answer's 200)")
    report.add_argument("--verbose", action="store_true", help="say which artefacts are downloaded")
    report.set_defaults(func=_cmd_report)

    rounds = sub.add_parser("rounds", help="alignment rounds: DPO from @champion, promoted only on a validated win")
    actions = rounds.add_subparsers(dest="action", required=True)
    rounds_run = actions.add_parser("run", help="run (or resume) a series of rounds through the pipeline flow")
    rounds_run.add_argument("overrides", nargs="*", help="Hydra overrides of every round, e.g. experiment=smoke")
    length = rounds_run.add_mutually_exclusive_group(required=True)
    length.add_argument("--rounds", type=int, help="the series' length: run its rounds up to N (finished ones skip)")
    length.add_argument("--more", type=int, help="add K rounds past the finished ones (a nightly schedule: 1)")
    rounds_run.add_argument("--name", default="rounds", help="the series (reports/rounds/NAME/rounds.json)")
    rounds_run.set_defaults(func=_cmd_rounds_run)
    rounds_show = actions.add_parser("show", help="the series' curve: a table and reports/rounds/NAME/rounds.png")
    rounds_show.add_argument("--name", default="rounds")
    rounds_show.set_defaults(func=_cmd_rounds_show)

    ui = sub.add_parser("ui", help="open the MLflow UI on the project's store")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=_cmd_ui)
    return parser


EXIT_BUSY = 3  # the workspace is held by another command (README: exit codes)


def main(argv: Sequence[str] | None = None) -> int:
    from hydra.errors import ConfigCompositionException

    from silkfire.config_schema import UnknownConfigKeyError
    from silkfire.runtime import RuntimeConfigError
    from silkfire.workspace import WorkspaceBusy

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except WorkspaceBusy as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BUSY
    except (RuntimeConfigError, UnknownConfigKeyError) as error:  # e.g. runtime.device=cuda without a GPU, a typo
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ConfigCompositionException as error:  # Hydra: an override of a key conf/ lacks, an unknown group option
        print(f"error: {error}{_override_hint(error)}", file=sys.stderr)
        return 2


def _override_hint(error: Exception) -> str:
    """For Hydra's "Could not override 'key'": the declared key the user probably meant."""
    import re

    from silkfire.config import CONFIG_DIR, project_root
    from silkfire.config_schema import closest

    found = re.search(r"Could not override '([^']+)'", str(error))
    near = closest(found.group(1), project_root() / CONFIG_DIR) if found else None
    return f"\n  (did you mean {near}?)" if near else ""


if __name__ == "__main__":
    sys.exit(main())
