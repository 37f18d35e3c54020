"""Published data feeding the stages that use it, through the stage runner (params.yaml, MLflow, the real gates):

- VLFeedback as published (parquet with the images embedded as bytes) -> `sample` (`silkie.sample.source:
  vlfeedback`; images extracted under the image root by content hash) -> `annotate` (API judge) ->
  `validate_feedback` -> `pairs` -> `dpo` (which checks both gates' verdicts);
- FIRE-100K / FIRE-Bench as published -> `dialogues` (`fire.dialogues.source: published`) -> `validate_dialogues`
  (images under `fire.dialogues.published.image_root`) -> the verdict `fire_student` and `fire_teacher` check; a bad
  published record fails the gate and both refuse."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from silkfire.config import compose
from silkfire.data import testing as make
from silkfire.io import read_records
from silkfire.quality.verdict import GateNotPassed, require_passed
from silkfire.stages.runner import run_stage

ROOT = Path(__file__).resolve().parents[2]
ASPECTS = ("Helpfulness", "Visual Faithfulness", "Ethical Considerations")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # shared 2-core machine: one thread per test process


def judge_reply(body: dict) -> str:
    """Rates each response of the annotation prompt by its length (distinct ratings: pairs can be built)."""
    text = next(part["text"] for part in body["messages"][0]["content"] if part["type"] == "text")
    responses = re.findall(r"^- <text \d+> (.*)$", text.split("## Annotation", 1)[1], re.M)
    parts = []
    for aspect in ASPECTS:
        parts.append(f"#### {aspect} Assessment")
        for k, response in enumerate(responses, start=1):
            parts.append(f"##### Output for Text {k}\nRating: {len(response) % 5 + 1}\nRationale: ok {k}")
    return "\n".join(parts)


def policy_reply(body: dict) -> str:
    return f"A square, answer number {body['model'][-1]}" + "!" * int(body["model"][-1])


def test_vlfeedback_parquet_through_sample_annotate_gates_pairs_and_dpo(mlflow_root: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from silkfire.llm.testing import FakeChatServer
    from silkfire.models.testing import make_test_model

    monkeypatch.setenv("SILKFIRE_ROOT", str(mlflow_root))
    root = mlflow_root
    prompts = make.make_vlfeedback(root / "vlf", "parquet")  # vlf/data/train-00000-of-00001.parquet
    make_test_model(root / "models" / "sft" / "model")
    with FakeChatServer(policy_reply) as policies, FakeChatServer(judge_reply) as judge:
        pool = [f"+silkie.sample.pool.p{n}={{kind: api, base_url: '{policies.url}', model: m{n}, api_key_env: null}}"
                for n in range(1, 5)]
        cfg = compose([
            "experiment=silkie", "silkie.sample.source=vlfeedback",
            f"silkie.sample.prompts={prompts.relative_to(root)}",
            "silkie.sample.image_root=vlf", "silkie.sample.max_instructions=2", "silkie.sample.progress=false",
            "~silkie.sample.pool", *pool,
            "silkie/judge=api", f"silkie.judge.base_url={judge.url}", "silkie.judge.api_key_env=null",
            "silkie.judge.backoff_base_s=0.0",
            "silkie.dpo.max_steps=2", "silkie.dpo.batch_size=2", "silkie.dpo.num_threads=1",
            "silkie.dpo.progress=false",
            "silkie.dpo.eval_fraction=0.0", "silkie.dpo.ref_batch_size=4", "silkie.dpo.save_steps=2",
            "quality.data_docs=false", "tracking.log_model=false",
        ], ROOT)
        OmegaConf.save(cfg, root / "params.yaml")
        sampled = run_stage("sample", root)
        annotated = run_stage("annotate", root)
    assert sampled["instructions"] == 2 and annotated
    samples = read_records(root / "data/feedback/samples.jsonl")
    assert all(record["img_path"].startswith("extracted/") for record in samples)
    assert all((root / "vlf" / record["img_path"]).is_file() for record in samples)  # under the image root
    assert not (prompts.parent / "extracted").exists()  # only under silkie.sample.image_root

    with pytest.raises(GateNotPassed, match="validate_feedback gate"):
        run_stage("dpo", root)
    run_stage("validate_feedback", root)
    pairs = run_stage("pairs", root)
    assert pairs["pairs"] > 0
    require_passed(OmegaConf.load(root / "params.yaml"), root, "dpo")
    trained = run_stage("dpo", root)
    assert trained["global_step"] == 2
    assert (root / "models" / "dpo" / "model" / "model.safetensors").is_file()


def fire_project(root: Path, monkeypatch: pytest.MonkeyPatch, records: list[dict] | None = None) -> Path:
    monkeypatch.setenv("SILKFIRE_ROOT", str(root))
    make.make_fire(root / "FIRE", "FIRE-train-100K.json")
    make.make_fire(root / "FIRE", "FIRE-test.json")
    if records is not None:
        (root / "FIRE" / "FIRE-train-100K.json").write_text(json.dumps(records))
    cfg = compose(["experiment=fire_llava", "fire.dialogues.source=published",
                   "fire.dialogues.published.train_file=FIRE/FIRE-train-100K.json",
                   "fire.dialogues.published.test_file=FIRE/FIRE-test.json",
                   "fire.dialogues.published.image_root=FIRE", "fire.dialogues.train_questions=3",
                   "fire.sft.mix_sft=0", "quality.data_docs=false"], ROOT)
    OmegaConf.save(cfg, root / "params.yaml")
    return root


def test_fire_100k_is_a_dialogue_source_and_passes_the_fire_gate(mlflow_root: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    root = fire_project(mlflow_root, monkeypatch)
    metrics = run_stage("dialogues", root)
    assert metrics["source"] == "published"
    assert metrics["train"]["dialogues"] == 3 and metrics["test"]["dialogues"] == 4
    assert "val" not in metrics and not (root / "data/fire/dialogues/val.jsonl").exists()  # FIRE has no val split
    train = read_records(root / "data/fire/dialogues/train.jsonl")
    published = json.loads((root / "FIRE" / "FIRE-train-100K.json").read_text())
    assert all(record in published for record in train)  # copied as released
    assert [r["image"] for r in train] == sorted((r["image"] for r in train), key=[p["image"] for p in published].index)

    with pytest.raises(GateNotPassed, match="validate_dialogues gate"):
        require_passed(OmegaConf.load(root / "params.yaml"), root, "fire_teacher")
    gate = run_stage("validate_dialogues", root)
    assert gate["train"]["success"] and gate["train"]["images_checked"] == 3
    assert "val" not in gate
    for stage in ("fire_student", "fire_teacher"):  # they may train on it
        require_passed(OmegaConf.load(root / "params.yaml"), root, stage)


def test_a_published_val_file_becomes_the_val_split_and_is_gated(mlflow_root: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    root = fire_project(mlflow_root, monkeypatch)
    make.make_fire(root / "FIRE", "FIRE-val.json")
    cfg = OmegaConf.load(root / "params.yaml")
    cfg.fire.dialogues.published.val_file = "FIRE/FIRE-val.json"
    cfg.fire.dialogues.val_questions = 2
    OmegaConf.save(cfg, root / "params.yaml")
    metrics = run_stage("dialogues", root)
    assert metrics["val"]["dialogues"] == 2
    assert len(read_records(root / "data/fire/dialogues/val.jsonl")) == 2
    gate = run_stage("validate_dialogues", root)
    assert gate["val"]["success"] and gate["val"]["rows"] == 2


def test_fire_student_and_teacher_train_on_published_dialogues(mlflow_root: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """FIRE-100K as the dialogue source all the way to training: images resolve under the published image root
    (not the world), and world records cannot be mixed in (a clear error says to set mix_sft=0)."""
    from silkfire.models.testing import make_test_model

    root = fire_project(mlflow_root, monkeypatch)
    cfg = OmegaConf.load(root / "params.yaml")
    for role in ("student", "teacher"):
        cfg.fire.sft[role].update({"max_steps": 2, "save_steps": 2, "batch_size": 2, "max_eval_samples": 4,
                                   "logging_steps": 1, "progress": False})
    cfg.tracking.log_model = False
    OmegaConf.save(cfg, root / "params.yaml")
    make_test_model(root / cfg.paths.sft / "model")
    run_stage("dialogues", root)
    run_stage("validate_dialogues", root)
    student = run_stage("fire_student", root)
    assert student["sets"]["mixed_sft"] == 0 and student["global_step"] == 2
    assert run_stage("fire_teacher", root)["global_step"] == 2
    assert (root / cfg.paths.fire_teacher / "model" / "model.safetensors").is_file()

    cfg.fire.sft.mix_sft = 0.3
    OmegaConf.save(cfg, root / "params.yaml")
    with pytest.raises((ValueError, GateNotPassed), match="mix_sft|validate gate"):
        run_stage("fire_student", root)


def test_a_bad_published_dialogue_fails_the_gate_and_fire_training_refuses(mlflow_root: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from silkfire.quality import GateFailed

    records = make.fire_dialogues(split="fire_100k")
    records[1]["groundtruth"]["value"] = "blue"
    records[1]["conversations"][2]["value"] = "Thought: I look again.\nAnswer: green\n"
    records[1]["conversations"][3]["value"] = "Score: 4.\nFeedback: The answer is blue.\n"  # gives the answer away
    root = fire_project(mlflow_root, monkeypatch, records)
    cfg = OmegaConf.load(root / "params.yaml")
    cfg.fire.dialogues.train_questions = None
    OmegaConf.save(cfg, root / "params.yaml")
    run_stage("dialogues", root)
    with pytest.raises(GateFailed, match=r"reveals the ground truth 'blue'"):
        run_stage("validate_dialogues", root)
    for stage in ("fire_student", "fire_teacher"):
        with pytest.raises(GateNotPassed, match=r"the validate_dialogues gate failed"):
            run_stage(stage, root)


def test_published_dialogues_need_their_files_and_image_root(mlflow_root: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    root = fire_project(mlflow_root, monkeypatch)
    cfg = OmegaConf.load(root / "params.yaml")
    cfg.fire.dialogues.published.image_root = None
    OmegaConf.save(cfg, root / "params.yaml")
    with pytest.raises(ValueError, match=r"fire.dialogues.published.image_root"):
        run_stage("dialogues", root)
    cfg.fire.dialogues.published.image_root = "FIRE"
    cfg.fire.dialogues.published.test_file = None
    OmegaConf.save(cfg, root / "params.yaml")
    with pytest.raises(ValueError, match=r"fire.dialogues.published.test_file"):
        run_stage("dialogues", root)
