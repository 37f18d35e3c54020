"""Stage `validate_dialogues`: the FIRE data-quality gate (kind `fire`) on the simulated dialogues.

Every dialogue file (train, test, val; published data has val only when a published val file is configured:
:func:`silkfire.artefacts.dialogue_splits`) goes through `silkfire validate fire`'s gate with the policy
`fire.validate.policy`: under `fail` a bad dialogue stops the branch before training; under `filter` bad dialogues
are quarantined and the later stages read the clean copies (:func:`gated_dialogues`). Reports (text, Markdown,
JSON, Data Docs) are written and logged to MLflow before the verdict, so a failed gate leaves everything a person
needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from silkfire.artefacts import dialogue_file, gated_dialogues  # noqa: F401 -- gated_dialogues re-exported
from silkfire.artefacts import dialogue_report_dir as report_dir
from silkfire.stages import Dep, Out

PARAMS = ("quality", "fire.validate", "fire.dialogues.source", "fire.dialogues.published", "paths.world", "paths.fire",
          "paths.reports")
DEPS = (
    Dep("${paths.fire}/dialogues"),
    Dep("${paths.world}"),
)
OUTS = (
    Out("${paths.reports}/validate_dialogues",
        note="one gate report (and clean copy) per split: train/, test/, val/"),
)
SPLITS = ("train", "test", "val")  # every split there can be; the ones this config makes: artefacts.dialogue_splits(cfg)
FAILURE_REPORT = "report.md"  # the flow publishes <reports>/<stage>/report.md when the stage fails
FAILURE_TABLE = "failures.json"


def quality_config(cfg: DictConfig) -> Any:
    """The quality config with the branch's policy for kind `fire`."""
    from silkfire.quality import QualityConfig

    values = OmegaConf.to_container(cfg.quality, resolve=True)
    assert isinstance(values, dict)
    values.setdefault("fire", {})["policy"] = str(cfg.fire.validate.policy)
    return QualityConfig.from_mapping(values)


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    import json
    import shutil

    import mlflow

    from silkfire.quality import GateFailed, validate_fire
    from silkfire.artefacts import dialogue_image_root as image_root
    from silkfire.artefacts import dialogue_splits as splits
    from silkfire.quality.verdict import record_verdict
    from silkfire.tracking.gates import log_gate_reports, tag_gate

    config = quality_config(cfg)
    images = image_root(cfg, root)  # the world, or fire.dialogues.published.image_root
    reports = report_dir(cfg, root)
    reports.mkdir(parents=True, exist_ok=True)
    for split in set(SPLITS) - set(splits(cfg)):
        shutil.rmtree(reports / split, ignore_errors=True)  # an earlier run's clean copy must not stand in for it
    results = {}
    for split in splits(cfg):
        path = dialogue_file(cfg, root, split)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run the dialogues stage first")
        results[split] = validate_fire(path, config, reports / split, image_root=images)
    markdown = "\n\n".join(f"## {split} dialogues\n\n{result.to_markdown()}" for split, result in results.items())
    (reports / FAILURE_REPORT).write_text(markdown, encoding="utf-8")
    failures = [row | {"split": split} for split, result in results.items() for row in result.failure_rows()]
    (reports / FAILURE_TABLE).write_text(json.dumps(failures, indent=1), encoding="utf-8")
    # the verdict `fire_student` and `fire_teacher` check (silkfire.quality.verdict)
    record_verdict(reports, results.values(), root, "validate_dialogues")
    for split in results:
        log_gate_reports(reports / split, artifact_path=f"validation/{split}")
    mlflow.log_artifact(str(reports / FAILURE_REPORT), artifact_path="validation")
    tag_gate(all(result.success for result in results.values()), str(cfg.fire.validate.policy))
    for result in results.values():
        if not result.success:
            raise GateFailed(result)
    return {split: {k: v for k, v in result.summary().items() if not isinstance(v, str)}
            for split, result in results.items()}


def summary(metrics: dict[str, Any]) -> str:
    parts = []
    for split in (split for split in SPLITS if split in metrics):
        data = metrics[split]
        text = f"{split} {data.get('rows', '?')} dialogues"
        if data.get("rows_quarantined"):
            text += f" ({data['rows_quarantined']} quarantined)"
        parts.append(text)
    return "FIRE gate passed: " + ", ".join(parts)


def check(cfg: DictConfig) -> None:
    """Parse the typed settings this stage reads (silkfire.stages.runner.check_config: before any stage runs)."""
    quality_config(cfg)
