"""dvc.yaml and the stage modules agree: same stages, same order, exact param keys, own code as a dependency."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from silkfire.config import compose
from silkfire.stages import BRANCHES, STAGES, dvc_file, dvc_target, pipeline_stages
from silkfire.stages.runner import stage_module

ROOT = Path(__file__).resolve().parents[2]
DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
# Branch stages are checked once their pipelines/<branch>/dvc.yaml exists.
BUILT = tuple(s for s in pipeline_stages(list(BRANCHES)) if (ROOT / dvc_file(s)).is_file())


def stage_spec(stage: str) -> dict:
    return yaml.safe_load((ROOT / dvc_file(stage)).read_text())["stages"][stage]


def test_dvc_stages_are_the_pipeline_stages_in_order() -> None:
    assert tuple(DVC_YAML["stages"]) == STAGES
    for branch, stages in BRANCHES.items():
        path = ROOT / "pipelines" / branch / "dvc.yaml"
        if path.is_file():
            assert tuple(yaml.safe_load(path.read_text())["stages"]) == stages


def test_branch_stages_run_from_the_project_root() -> None:
    """Branch dvc.yaml files live in pipelines/<branch>/; `wdir: ../..` makes their paths and params root-relative."""
    for stage in BUILT:
        if stage not in STAGES:
            assert stage_spec(stage).get("wdir") == "../..", stage
            assert dvc_target(stage) == f"pipelines/{dvc_file(stage).split('/')[1]}/dvc.yaml:{stage}"


@pytest.mark.parametrize("stage", BUILT)
def test_stage_params_match_module(stage: str) -> None:
    declared = stage_spec(stage)["params"]
    assert sorted(declared) == sorted(stage_module(stage).PARAMS), (
        f"dvc.yaml params of {stage!r} differ from silkfire.stages.{stage}.PARAMS"
    )


@pytest.mark.parametrize("stage", BUILT)
def test_stage_depends_on_its_code_and_runs_its_module(stage: str) -> None:
    spec = stage_spec(stage)
    assert f"src/silkfire/stages/{stage}.py" in spec["deps"]
    assert spec["cmd"] == f"silkfire stage {stage}"
    for dep in spec["deps"]:
        if not dep.startswith("${"):
            assert (ROOT / dep).exists(), f"{stage}: dependency {dep} does not exist"


@pytest.mark.parametrize("stage", BUILT)
def test_declared_param_keys_exist_in_config(stage: str) -> None:
    cfg = compose([], ROOT)
    for key in stage_module(stage).PARAMS:
        assert OmegaConf.select(cfg, key, default="__missing__") != "__missing__", f"{stage}: {key} not in config"


def test_training_never_starts_before_the_gate() -> None:
    """sft depends on the gate's verdict inside validate's output, so DVC cannot order it before the gate."""
    assert "${paths.reports}/validate/verdict.json" in DVC_YAML["stages"]["sft"]["deps"]
    assert "${paths.reports}/validate" in DVC_YAML["stages"]["validate"]["outs"]


def test_params_yaml_is_the_composed_default_config() -> None:
    """params.yaml in git is what `dvc exp run` / `silkfire params` compose from conf/ with no overrides."""
    committed = OmegaConf.load(ROOT / "params.yaml")
    assert OmegaConf.to_container(committed) == OmegaConf.to_container(compose([], ROOT))


def test_unknown_branch_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="silkie"):
        pipeline_stages(["nope"])
    assert pipeline_stages([]) == STAGES
    assert pipeline_stages(["fire"])[-len(BRANCHES["fire"]):] == BRANCHES["fire"]


def test_dvc_yaml_files_are_generated_from_the_stage_registry() -> None:
    """Every dvc.yaml is what silkfire.stages.dvc_yaml makes from the stage modules (`make dvc-yaml`): code deps
    are each stage's import closure, params its PARAMS, data deps and outs its DEPS / OUTS."""
    from silkfire.stages.dvc_yaml import generate

    for relative, text in generate(ROOT).items():
        assert (ROOT / relative).read_text(encoding="utf-8") == text, (
            f"{relative} differs from the stage registry: edit the stage module, then run `make dvc-yaml`")


def test_a_declaration_in_the_stage_module_is_what_dvc_reads() -> None:
    """The registry's conventions: metrics file, curves, metrics row, persist and cache flags, branch wdir."""
    from silkfire.stages.dvc_yaml import generate

    files = {relative: yaml.safe_load(text) for relative, text in generate(ROOT).items()}
    sft = files["dvc.yaml"]["stages"]["sft"]
    assert sft["cmd"] == "silkfire stage sft" and "wdir" not in sft
    assert {"${paths.sft}": {"persist": True}} in sft["outs"]
    assert {"${paths.metrics}/sft.json": {"cache": False}} in sft["outs"]
    assert {"${paths.metrics}/curves/sft.png": {"cache": False}} in sft["outs"]
    assert sft["deps"][:3] == ["${paths.world}", "${paths.reports}/validate/verdict.json", "${paths.base_model}"]
    assert "src/silkfire/stages/sft.py" in sft["deps"]
    evaluate_dpo = files["pipelines/silkie/dvc.yaml"]["stages"]["evaluate_dpo"]
    assert evaluate_dpo["wdir"] == "../.." and evaluate_dpo["metrics"] == [
        {"${paths.metrics}/summary/evaluate_dpo.json": {"cache": False}}]
    assert files["pipelines/fire/dvc.yaml"]["vars"] == ["../../params.yaml"]


def test_import_closure_follows_lazy_imports_and_leaves_out_orchestration() -> None:
    from silkfire.stages.code_deps import code_deps

    sft = code_deps("sft", ROOT)
    # sft renders its prompts through the world's templates and logs its curve through the tracking callbacks,
    # both imported inside functions; the gate verdict it checks first
    for needed in ("src/silkfire/world/templates.py", "src/silkfire/tracking/curve_logger.py",
                   "src/silkfire/quality/verdict.py", "src/silkfire/stages/sft.py", "src/silkfire/__init__.py"):
        assert needed in sft
    assert not {"src/silkfire/cli.py", "src/silkfire/stages/runner.py", "src/silkfire/flow.py"} & set(sft)
    assert "src/silkfire/train/dpo.py" not in sft  # another stage's trainer is not sft's code
    assert "src/silkfire/eval/answers.py" in code_deps("fire_bench", ROOT)  # issue 15: FIRE-Bench generates


def _out_paths(spec: dict, section: str) -> list[str]:
    return [next(iter(entry)) if isinstance(entry, dict) else entry for entry in spec.get(section) or []]


@pytest.mark.parametrize("stage", BUILT)
def test_dvc_metrics_are_the_table_rows_and_every_stage_keeps_its_full_figures(stage: str) -> None:
    """`dvc metrics show` prints one row per evaluated model (silkfire.reporting.METRICS_TABLE), so its columns fit a
    terminal; each stage's full metrics/<stage>.json stays a plain output (versioned, read by sweeps)."""
    from silkfire.reporting import METRICS_TABLE

    spec = stage_spec(stage)
    assert "${paths.metrics}/%s.json" % stage in _out_paths(spec, "outs")
    expected = ["${paths.metrics}/summary/%s.json" % stage] if stage in METRICS_TABLE else []
    assert _out_paths(spec, "metrics") == expected
    assert "plots" not in spec  # curves are plotted as one directory (the top-level `plots` of dvc.yaml)


def test_training_curves_are_one_plotted_directory() -> None:
    assert DVC_YAML["plots"] == [{"${paths.metrics}/curves": {"x": "step", "y": "loss"}}]
    curves = {stage: [p for p in _out_paths(stage_spec(stage), "outs") if "/curves/" in p] for stage in BUILT}
    assert {stage: names for stage, names in curves.items() if names} == {
        "sft": ["${paths.metrics}/curves/sft.csv", "${paths.metrics}/curves/sft.png"],
        "dpo": ["${paths.metrics}/curves/dpo.csv", "${paths.metrics}/curves/dpo.png"],
        "fire_student": ["${paths.metrics}/curves/fire_student.csv", "${paths.metrics}/curves/fire_student.png"],
        "fire_teacher": ["${paths.metrics}/curves/fire_teacher.csv", "${paths.metrics}/curves/fire_teacher.png"],
    }


def test_metrics_table_row_takes_its_columns_from_the_stage_figures() -> None:
    from silkfire.reporting import metrics_table_row

    figures = {"dpo": {"mme_perception": 622.08333, "mme_cognition": 311.6666, "mmhal_score": 3.5,
                       "hallucination_rate": 0.158333}, "sft": {"mmhal_score": 3.4}}
    assert metrics_table_row("evaluate_dpo", figures) == {
        "perception": 622.083, "cognition": 311.667, "mmhal": 3.5, "halluc_rate": 0.158}
    assert metrics_table_row("evaluate", {"mme": {"sft": {"perception": 600.0}}}) == {"perception": 600.0}
    assert metrics_table_row("sft", {"train_loss": 0.1}) is None


def test_fire_student_and_teacher_read_only_their_own_settings() -> None:
    """A teacher-only setting re-runs only the teacher, and the reverse (the DVC params of each FIRE stage)."""
    student, teacher = (set(stage_spec(f"fire_{role}")["params"]) for role in ("student", "teacher"))
    assert "fire.sft.student" in student and not any("teacher" in key for key in student)
    assert "fire.sft.teacher" in teacher and not any("student" in key for key in teacher)
    assert "fire.sft" not in student | teacher  # the whole group would tie them together again


@pytest.mark.parametrize(("judge", "reads"), [
    ("oracle", "data/feedback/samples.jsonl"),
    ("api", "data/feedback/samples.jsonl"),
    ("fire_teacher", "models/fire_teacher/model"),
])
def test_annotate_depends_on_what_its_judge_reads(judge: str, reads: str, tmp_path: Path) -> None:
    """The FIRE teacher as judge reads the other branch's model: a retrained teacher must re-run annotate, so its
    folder is a DVC dep (`silkie.judge.reads`); every judge declares the key, so the dep always resolves."""
    assert "${silkie.judge.reads}" in stage_spec("annotate")["deps"]
    cfg = compose([f"silkie/judge={judge}"], ROOT)
    assert cfg.silkie.judge.reads == reads
    from silkfire.vlfeedback.judges import make_judge

    if judge == "api":  # the cost total rebuilds the client from the judge's settings: reads is not one of them
        from silkfire.stages.annotate import judge_totals

        part = {"judge_cost_usd": 0.0, "judge_prompt_tokens": 1e6, "judge_completion_tokens": 0.0}
        judge_cfg = OmegaConf.to_container(cfg.silkie.judge)
        assert judge_totals(judge_cfg, [part])["judge_cost_usd"] == pytest.approx(2.5)  # $2.5 per 1M prompt tokens
    if judge == "oracle":  # the key is the stage's, not the judge's: the judge is built without it
        from silkfire.models.testing import make_test_world

        world = make_test_world(tmp_path / "world", train_scenes=1, val_scenes=1, test_scenes=1)
        assert make_judge(OmegaConf.to_container(cfg.silkie.judge), world_dir=world) is not None
