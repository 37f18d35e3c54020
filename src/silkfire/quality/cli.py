"""``silkfire validate KIND PATH [--image-root DIR] [--rule silkie|strict]``: any file through its gate, a report, an exit code.

The top-level CLI (``silkfire.cli``) parses the arguments and calls :func:`validate_command`; everything
else lives here so the command can be tested without the CLI.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from silkfire.quality.config import QualityConfig

FILE_KINDS = ("vlfeedback", "pairs", "fire", "mme", "mmhal")
KINDS = (*FILE_KINDS, "world")  # world: PATH is a world folder (scenes/train/val/mme/open.jsonl + images)
DEFAULT_REPORTS = Path("reports") / "validate"


def validator(kind: str) -> Callable[..., Any]:
    """The ``validate_<kind>`` function of a gate (imported on demand)."""
    import importlib

    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {list(KINDS)}")
    module = importlib.import_module(f"silkfire.quality.{kind}")
    return getattr(module, f"validate_{kind}")


def validate(
    kind: str,
    path: str | Path,
    config: QualityConfig,
    report_dir: str | Path,
    image_root: str | Path | None = None,
    *,
    previous_profile: str | Path | None = None,
    progress: bool = False,
) -> Any:
    """Run the gate of ``kind`` on ``path``; returns its :class:`~silkfire.quality.report.GateResult`."""
    function = validator(kind)
    if kind == "world":  # the world's images resolve against its own folder
        return function(path, config, report_dir, previous_profile=previous_profile, progress=progress)
    return function(path, config, report_dir, image_root, previous_profile=previous_profile, progress=progress)


def config_from_overrides(overrides: Sequence[str] = (), base: QualityConfig | None = None) -> QualityConfig:
    """``QualityConfig`` defaults (= conf/quality/default.yaml) with dotted overrides: ``fire.policy=filter``."""
    from omegaconf import OmegaConf

    merged = OmegaConf.create((base or QualityConfig()).to_dict())
    if overrides:
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r}: expected key=value, e.g. fire.policy=filter")
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
    return QualityConfig.from_mapping(merged)


def validate_command(
    kind: str,
    path: Path,
    image_root: Path | None = None,
    overrides: Sequence[str] = (),
    *,
    report_dir: Path | None = None,
    previous_profile: Path | None = None,
    config: QualityConfig | None = None,
    progress: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Validate one file (JSONL or a JSON list) and print the text report.

    Image paths resolve against ``image_root`` (default: the file's folder). Reports (``report.txt``,
    ``validation.json``, ``data_docs/``, ``profile.json``, under policy filter ``quarantine.jsonl`` and
    ``clean/``) go to ``report_dir`` (default ``reports/validate/<kind>/<file stem>``). Returns 0 when the
    gate passes, 1 when it fails, 2 when the command itself is wrong (unknown kind, bad override, missing or
    malformed previous profile). A truncated or undecodable line is a failure with its line number, never a
    crash; should the gate itself still raise on some input, that is exit 1 (the file did not pass) with one
    ``error:`` line naming the file, not a traceback and not 2 (the command was right).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    path = Path(path)
    try:
        validator(kind)
        config = config_from_overrides(overrides, config)
    except (ValueError, ImportError) as error:
        print(f"error: {error}", file=err)
        return 2
    if previous_profile is not None:
        if not Path(previous_profile).is_file():
            print(f"error: previous profile {previous_profile} not found (omit it on a first run)", file=err)
            return 2
        from silkfire.quality.profile import load_profile

        try:
            load_profile(previous_profile)  # a malformed one is a usage error, found before the gate runs
        except (ValueError, OSError) as error:
            print(f"error: {error}", file=err)
            return 2
    report_dir = Path(report_dir) if report_dir else DEFAULT_REPORTS / kind / (path.stem or "data")
    try:
        result = validate(kind, path, config, report_dir, image_root, previous_profile=previous_profile,
                          progress=progress)
    except Exception as error:  # noqa: BLE001 -- the file could not be checked: it did not pass
        print(f"error: {kind} gate: {path}: could not check the file ({type(error).__name__}: {error})"[:1000],
              file=err)
        return 1
    print(result.to_text(), file=out)
    summary = result.summary()
    print(
        f"\nrows in {summary['rows_in']}, out {summary['rows_out']}, quarantined {summary['rows_quarantined']}, "
        f"failing {summary['rows_failing']} (policy {summary['policy']}); {summary['elapsed_s']:.1f} s",
        file=out,
    )
    return 0 if result.success else 1


def main(argv: Sequence[str] | None = None) -> int:
    """A stand-alone entry (``python -m silkfire.quality.cli KIND PATH``), the same as ``silkfire validate``."""
    import argparse

    parser = argparse.ArgumentParser(prog="silkfire validate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_args(args)


def add_arguments(parser: Any) -> None:
    """The arguments of ``silkfire validate`` (for the top-level CLI's subparser)."""
    parser.add_argument("kind", choices=KINDS, help="record kind of the file")
    parser.add_argument("path", type=Path, help="JSONL or JSON-list file (world: the world folder)")
    parser.add_argument("--image-root", type=Path, default=None,
                        help="folder image paths resolve against (default: the file's folder)")
    parser.add_argument("--report-dir", type=Path, default=None,
                        help="where reports go (default: reports/validate/<kind>/<file stem>)")
    parser.add_argument("--previous-profile", type=Path, default=None,
                        help="profile.json of the previous data version (drift checks)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a quality config override, repeatable: --set fire.policy=filter --set check_images=false")
    parser.add_argument("--rule", choices=("silkie", "strict"), default=None,
                        help="pairs only: the pair rule that built the file (= --set pairs.rule=RULE); silkie "
                             "accepts repeated and equal chosen/rejected texts, strict (default) refuses them")


def run_args(args: Any) -> int:
    overrides = list(args.overrides)
    if getattr(args, "rule", None):
        overrides.append(f"pairs.rule={args.rule}")
    return validate_command(args.kind, args.path, args.image_root, overrides, report_dir=args.report_dir,
                            previous_profile=args.previous_profile, progress=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
