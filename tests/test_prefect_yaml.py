"""prefect.yaml points at the real flow, with the parameters it accepts, a valid cron and concurrency limit 1."""

from __future__ import annotations

import inspect
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_deployments_name_the_flow_and_its_parameters() -> None:
    from prefect.client.schemas.schedules import CronSchedule

    from silkfire.cli import load_flow_module

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    flows = load_flow_module(ROOT)
    assert spec["deployments"]
    for deployment in spec["deployments"]:
        path, _, name = deployment["entrypoint"].partition(":")
        assert (ROOT / path).is_file() and hasattr(flows, name)
        accepted = set(inspect.signature(getattr(flows, name).fn).parameters)
        assert set(deployment["parameters"]) <= accepted, deployment["name"]
        assert deployment["concurrency_limit"] == 1
        for schedule in deployment["schedules"]:
            CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])  # raises on a bad cron


def test_failure_artefact_keys_are_valid_for_every_stage() -> None:
    """Prefect rejects keys with underscores; a failed `validate_feedback` once crashed while reporting its failure."""
    from prefect.artifacts import MarkdownArtifact

    from silkfire.cli import load_flow_module
    from silkfire.stages import ALL_STAGES

    flows = load_flow_module(ROOT)
    assert any("_" in stage for stage in ALL_STAGES)
    for stage in ALL_STAGES:
        for suffix in ("failure", "failures"):
            MarkdownArtifact(key=flows.artifact_key(stage, suffix), markdown="x")  # raises on an invalid key
