"""The silkie branch stage by stage (`silkfire stage <name>`'s code path: params.yaml, MLflow run, metrics file) on
a tiny world and tiny models: sample -> annotate -> validate_feedback -> pairs -> dpo -> evaluate_dpo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from silkfire.config import compose
from silkfire.io import read_records, write_jsonl
from silkfire.models.testing import make_test_model, make_test_world
from silkfire.stages import BRANCHES
from silkfire.stages.runner import run_stage

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "experiment=silkie",
    "silkie.sample.max_instructions=16", "silkie.sample.max_new_tokens=8", "silkie.sample.batch_size=16",
    "silkie.sample.progress=false",
    "silkie.dpo.max_steps=4", "silkie.dpo.batch_size=4", "silkie.dpo.save_steps=2", "silkie.dpo.logging_steps=1",
    "silkie.dpo.num_threads=1", "silkie.dpo.progress=false", "silkie.dpo.ref_batch_size=16",
    "silkie.dpo.eval_fraction=0.1",
    "silkie.evaluate.mme_max_items=24", "silkie.evaluate.mmhal_max_items=8", "silkie.evaluate.mmhal_max_new_tokens=8",
    "silkie.evaluate.batch_size=16", "quality.data_docs=false",
]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # shared 2-core machine: one thread per test process


def make_project(root: Path, overrides: list[str] = (), models: bool = True) -> Path:
    """A project root holding what the foundation leaves: world, base model, SFT model + 2 step checkpoints."""
    cfg = compose([*TINY, *overrides], ROOT)
    OmegaConf.save(cfg, root / "params.yaml")
    make_test_world(root / cfg.paths.world, train_scenes=6, val_scenes=1, test_scenes=8)
    if not models:
        return root
    base = make_test_model(root / cfg.paths.base_model)
    shutil.copytree(base, root / cfg.paths.sft / "model")
    for step in (1, 2):
        shutil.copytree(base, root / cfg.paths.sft / "checkpoints" / f"checkpoint-{step}")
    return root


@pytest.mark.slow  # ~100 s on the shared 2-core machine (6 stages, 5 model loads, MLflow registry)
def test_the_branch_runs_stage_by_stage(mlflow_root: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    root = make_project(mlflow_root)
    metrics = {stage: run_stage(stage, root) for stage in BRANCHES["silkie"]}

    samples = read_records(root / "data/feedback/samples.jsonl")
    assert 10 <= len(samples) <= 16 and all(len(r["completions"]) == 4 for r in samples)  # family shares round
    pool = set(metrics["sample"]["per_policy"])
    assert {"base", "sft", "sft_step-1", "sft_step-2", "correct", "hallucinate"} <= pool
    assert metrics["sample"]["responses"] == 4 * len(samples) == 4 * metrics["sample"]["instructions"]

    annotated = read_records(root / "data/feedback/annotated.jsonl")
    ratings = annotated[0]["completions"][0]["annotations"]["Visual Faithfulness"]["Rating"]
    assert isinstance(ratings, str) and ratings in "12345"
    assert metrics["annotate"]["mean_rating"]["correct"] >= max(metrics["annotate"]["mean_rating"].values()) - 1e-9 \
        or "correct" not in metrics["annotate"]["mean_rating"]
    assert metrics["validate_feedback"]["rows"] == len(samples)

    pairs = read_records(root / "data/feedback/pairs.jsonl")
    assert pairs and metrics["pairs"]["pairs"] == len(pairs)
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)

    dpo = metrics["dpo"]
    assert dpo["global_step"] == 4 and (root / "models/dpo/model/model.safetensors").is_file()
    assert (root / "metrics/curves/dpo.csv").is_file()
    client = MlflowClient()
    version = client.get_model_version_by_alias("silkfire-dpo", "candidate")  # registered by register_dpo ...
    assert int(version.version) == metrics["register_dpo"]["challenger_version"]
    assert version.run_id == dpo["mlflow_run_id"] == dpo["logged_model"]["run_id"]  # ... from the dpo run's model
    run = client.get_run(dpo["mlflow_run_id"])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "dpo/reward_accuracy")]
    assert steps == [1, 2, 3, 4]
    for key in ("dpo/loss", "dpo/reward_margin", "dpo/chosen_logp", "dpo/rejected_logp"):
        assert client.get_metric_history(run.info.run_id, key), key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "curves")}
    assert "curves/dpo_curves.png" in artifacts

    evaluation = metrics["evaluate_dpo"]
    for label in ("sft", "dpo"):
        assert 0 <= evaluation[label]["mmhal_score"] <= 6 and 0 <= evaluation[label]["hallucination_rate"] <= 1
        assert set(evaluation[label]["mmhal_per_type"]) == {"attribute", "adversarial", "comparison", "counting",
                                                            "relation", "environment", "holistic", "other"}
        assert 0 <= evaluation[label]["mme_perception"] <= 800
    table = (root / "reports/evaluate_dpo/comparison.md").read_text()
    assert "| MMHal score (0-6) |" in table and "DPO - SFT" in table
    assert json.loads((root / "metrics/evaluate_dpo.json").read_text())["mmhal_items"] == 8
    mlflow.end_run()


def test_bad_feedback_stops_the_branch_at_its_gate(mlflow_root: Path) -> None:
    """A judge output with an invalid rating fails `validate_feedback` with a report naming the field; under policy
    filter the record is quarantined and `pairs` reads the clean copy."""
    from silkfire.quality import GateFailed

    root = make_project(mlflow_root, ["silkie.sample.pool.base=null", "silkie.sample.pool.sft=null",
                                      "silkie.sample.pool.sft_step=null"], models=False)  # scripted only
    for stage in ("sample", "annotate"):
        run_stage(stage, root)
    path = root / "data/feedback/annotated.jsonl"
    records = read_records(path)
    records[3]["completions"][1]["annotations"]["Helpfulness"]["Rating"] = "7"
    write_jsonl(path, records)
    with pytest.raises(GateFailed, match=r"Rating"):
        run_stage("validate_feedback", root)
    assert "Rating" in (root / "reports/validate_feedback/report.md").read_text()

    cfg = OmegaConf.load(root / "params.yaml")
    cfg.quality.vlfeedback.policy = "filter"
    cfg.quality.max_quarantine_fraction = 0.2
    OmegaConf.save(cfg, root / "params.yaml")
    run_stage("validate_feedback", root)
    clean = read_records(root / "reports/validate_feedback/clean/annotated.jsonl")
    assert len(clean) == len(records) - 1 and records[3]["id"] not in {r["id"] for r in clean}
    run_stage("pairs", root)
    assert records[3]["id"] not in {p["source_id"] for p in read_records(root / "data/feedback/pairs.jsonl")}


def test_real_mode_samples_vlfeedback_prompts_from_endpoints(mlflow_root: Path) -> None:
    """silkie.sample.source=vlfeedback: prompts of a VLFeedback file (published column-wise layout, images under
    merged_images/) and a pool of OpenAI-compatible endpoints; no scene graph needed (local HF folders as pool
    members: tests/policies)."""
    from PIL import Image

    from silkfire.llm.testing import FakeChatServer

    root = mlflow_root
    images = root / "vlf" / "merged_images"
    images.mkdir(parents=True)
    prompts = []
    for index in range(3):
        Image.new("RGB", (64, 64), (30 * index, 90, 200)).save(images / f"svit-{index}.jpg")
        prompts.append({"id": f"svit-{index}", "prompt": f"What is shown in picture {index}?",
                        "models": ["gpt-4v", "fuyu-8b"], "img_path": f"merged_images/svit-{index}.jpg",
                        "completions": {"model": ["gpt-4v", "fuyu-8b"], "response": ["a", "b"],
                                        "annotations": [None, None]}})
    write_jsonl(root / "vlf" / "prompts.jsonl", prompts)
    with FakeChatServer("A blue square.", fault_rate=0.3, fault_kinds=("503",), seed=1) as one, \
            FakeChatServer("Nothing.", model="other") as two:
        cfg = compose([*TINY, "silkie.sample.source=vlfeedback", "silkie.sample.prompts=vlf/prompts.jsonl",
                       "silkie.sample.image_root=vlf", "silkie.sample.responses=2",
                       "~silkie.sample.pool",
                       f"+silkie.sample.pool.gpt={{kind: api, base_url: '{one.url}', model: gpt-4o, "
                       "backoff_base_s: 0.0, max_retries: 6}",
                       f"+silkie.sample.pool.vllm={{kind: api, base_url: '{two.url}', model: llava}}"], ROOT)
        OmegaConf.save(cfg, root / "params.yaml")
        metrics = run_stage("sample", root)
    records = read_records(root / "data/feedback/samples.jsonl")
    assert [r["id"] for r in records] == ["svit-0", "svit-1", "svit-2"]
    assert all(sorted(r["models"]) == ["gpt", "vllm"] for r in records)
    by_model = {c["model"]: c["response"] for c in records[0]["completions"]}
    assert by_model == {"gpt": "A blue square.", "vllm": "Nothing."}
    assert records[0]["img_path"] == "merged_images/svit-0.jpg" and "scene_id" not in records[0]
    assert metrics["gpt_calls"] == 3 and metrics["gpt_prompt_tokens"] > 0  # token accounting per endpoint
