"""Champion/challenger: the decision rule by hand, and the gate against a real SQLite-backed registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from silkfire.tracking.champion import ChampionRule, Objective, decide, lookup, run_gate, version_metrics

RULE = ChampionRule.from_mapping({
    "primary": {"metric": "val.p", "mode": "max"},
    "min_margin": 2.0,
    "guards": {"val.c": {"mode": "max", "tolerance": 1.0}, "val.loss": {"mode": "min", "tolerance": 0.1}},
})


def test_first_model_becomes_champion() -> None:
    decision = decide(RULE, {"val.p": 10, "val.c": 5, "val.loss": 1.0}, None)
    assert decision.promote and "no champion" in decision.reason
    assert [row["role"] for row in decision.rows] == ["primary", "guard", "guard"]


@pytest.mark.parametrize(("challenger", "promote", "why"), [
    ({"val.p": 12.0, "val.c": 5.0, "val.loss": 1.0}, True, "improves by 2"),  # exactly the margin
    ({"val.p": 11.9, "val.c": 5.0, "val.loss": 1.0}, False, "below the margin"),
    ({"val.p": 20.0, "val.c": 3.9, "val.loss": 1.0}, False, "guard val.c"),  # primary wins, guard drops 1.1 > 1.0
    ({"val.p": 20.0, "val.c": 4.0, "val.loss": 1.1}, True, "every guard holds"),  # both guards exactly at tolerance
    ({"val.p": 20.0, "val.c": 9.0, "val.loss": 1.2}, False, "guard val.loss"),  # min-mode guard: loss up 0.2 > 0.1
])
def test_margin_and_guards(challenger: dict[str, float], promote: bool, why: str) -> None:
    decision = decide(RULE, challenger, {"val.p": 10.0, "val.c": 5.0, "val.loss": 1.0})
    assert decision.promote is promote
    assert why in decision.reason


def test_lookup_names_the_missing_metric() -> None:
    assert lookup({"mme": {"sft": {"perception": 120}}}, "mme.sft.perception") == 120.0
    with pytest.raises(KeyError, match="mme.sft.cognition"):
        lookup({"mme": {"sft": {}}}, "mme.sft.cognition")
    with pytest.raises(ValueError, match="finite"):
        lookup({"x": float("nan")}, "x")
    with pytest.raises(ValueError, match="mode"):
        Objective("val.x", "up")


def test_gate_moves_the_alias_only_when_the_challenger_wins(tmp_path: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    client.create_registered_model("m")
    versions = [client.create_model_version("m", source=str(tmp_path / f"v{i}")).version for i in range(3)]
    rule = ChampionRule.from_mapping({"primary": {"metric": "val.p"}, "min_margin": 1.0})

    first, before = run_gate(client, "m", int(versions[0]), "champion", rule, {"val": {"p": 100.0}})
    assert first.promote and before is None
    worse, before = run_gate(client, "m", int(versions[1]), "champion", rule, {"val": {"p": 100.5}})
    assert not worse.promote and before == int(versions[0])
    assert client.get_model_version_by_alias("m", "champion").version == versions[0]
    better, _ = run_gate(client, "m", int(versions[2]), "champion", rule, {"val": {"p": 150.0}})
    assert better.promote
    champion = client.get_model_version_by_alias("m", "champion")
    assert champion.version == versions[2]
    assert version_metrics(champion.tags) == {"val.p": 150.0}
    assert client.get_model_version("m", versions[1]).tags["silkfire.decision"].startswith("rejected")
    table = better.markdown("v3", "v1")
    assert "PROMOTED" in table and "| val.p | primary |" in table


def test_with_no_champion_a_baseline_must_be_beaten_first(tmp_path: Path) -> None:
    """DPO's gate (register_dpo): the first version is compared with the SFT model it started from."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    client.create_registered_model("d")
    first, second = (client.create_model_version("d", source=str(tmp_path / f"v{i}")).version for i in range(2))
    rule = ChampionRule.from_mapping({"primary": {"metric": "val.dpo.s"}, "min_margin": 0.1,
                                      "guards": {"val.dpo.h": {"mode": "min", "tolerance": 0.0}}})
    start = {"val.dpo.s": 3.5, "val.dpo.h": 0.10}  # the SFT start's figures under the rule's names
    worse, before = run_gate(client, "d", int(first), "champion", rule, {"val": {"dpo": {"s": 3.45, "h": 0.10}}},
                             baseline=start)
    assert not worse.promote and before is None and "against the baseline" in worse.reason
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("d", "champion")  # a DPO that lost to its start is never served
    better, _ = run_gate(client, "d", int(second), "champion", rule, {"val": {"dpo": {"s": 3.7, "h": 0.08}}},
                         baseline=start)
    assert better.promote and client.get_model_version_by_alias("d", "champion").version == second


def test_register_dpo_reads_dpo_figures_and_its_start_model_as_baseline() -> None:
    from omegaconf import OmegaConf

    from silkfire.config import compose
    from silkfire.stages.register_dpo import baseline_metrics, settings

    cfg = compose([])
    rule = settings(cfg)
    assert rule.primary.metric == "val.dpo.mmhal_score" and cfg.silkie.register.baseline == "sft"
    evaluation = {"val": {"dpo": {"mmhal_score": 3.6}, "sft": {"mmhal_score": 3.5, "hallucination_rate": 0.1,
                                                               "mme_perception": 700.0}}}
    assert baseline_metrics(evaluation, [o.metric for o in rule.objectives], "sft") == {
        "val.dpo.mmhal_score": 3.5, "val.dpo.hallucination_rate": 0.1, "val.dpo.mme_perception": 700.0}
    for bad, match in ((["silkie.register.primary.metric=dpo.mmhal_score"], "test"),
                       (["silkie.register.primary.metric=val.sft.mmhal_score"], "DPO figure"),
                       (["silkie.register.baseline=base"], "baseline")):
        with pytest.raises(ValueError, match=match):
            settings(OmegaConf.merge(cfg, OmegaConf.from_dotlist(bad)))


def test_gate_summary_says_what_the_challenger_was_compared_with() -> None:
    from silkfire.tracking.champion import gate_summary

    assert gate_summary({"compared_with": "baseline", "promoted": False, "challenger_version": 3}) == \
        "v3 did not beat its start model"
    assert gate_summary({"compared_with": "champion", "promoted": True, "challenger_version": 4,
                         "champion_version_before": 2}) == "v4 promoted to champion (was v2)"
    assert gate_summary({"skipped": True}) == "skipped (no registered model)"
