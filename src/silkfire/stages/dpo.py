"""Stage `dpo`: DPO of the start model (`silkie.start_model`: the SFT model, or an alignment round's champion) on the
gated preference pairs (silkfire.train.dpo).

Per-step metrics (loss, reward accuracy/margin, chosen/rejected rewards and log-probs, learning rate) stream to
MLflow; the curves are a plot artefact and `metrics/curves/dpo.{csv,png}` (DVC plots). The model folder is logged to the
run; `register_dpo` registers it as `silkie.registered_model` (silkfire-dpo) with the `candidate` alias.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from silkfire.quality.verdict import require_passed
from silkfire.stages import Dep, Out

PARAMS = ("silkie.dpo", "runtime", "silkie.sample.source", "silkie.sample.image_root",
          "silkie.start_model", "tracking.log_model", "paths.world", "paths.feedback",
          "paths.reports", "paths.dpo", "paths.metrics")
DEPS = (
    Dep("${paths.feedback}/pairs.jsonl"),
    Dep("${paths.reports}/pairs/verdict.json",
        "DPO never starts on pairs that did not pass their gate"),
    Dep("${paths.reports}/validate_feedback/verdict.json",
        "... nor on pairs built from records that did not pass theirs"),
    Dep("${paths.world}"),
    Dep("${silkie.start_model}",
        "the model DPO starts from and is the reference of: the SFT model, or an alignment round's champion"),
)
OUTS = (
    Out("${paths.dpo}", persist=True,
        note="kept across repro: silkie.dpo.resume=auto continues a killed run's checkpoints (fingerprinted)"),
)
CURVE_NAMES = ("dpo",)  # metrics/curves/<name>.{csv,png}
CURVES = (("loss", "dpo_loss", "nll"),
          ("reward_accuracy", "eval_reward_accuracy", "image_reward_accuracy", "eval_image_reward_accuracy"),
          ("reward_margin", "chosen_reward", "rejected_reward"), ("chosen_logp", "rejected_logp"))


def dpo_curves(history: Sequence[Mapping[str, Any]]) -> Any:
    """Four panels against the step: losses, reward accuracy, rewards/margin, policy log-probs."""
    from silkfire.tracking.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.6))
    for ax, keys in zip(axes, CURVES):
        for key in keys:
            points = [(row["step"], row[key]) for row in history if row.get(key) not in (None, "")]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o" if key.startswith("eval_") else None, label=key)
        ax.set(xlabel="step", title=keys[0])
        ax.legend(fontsize=7)
    fig.suptitle("DPO")
    fig.tight_layout()
    return fig


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    import mlflow

    from silkfire.artefacts import feedback_image_root, gated_pairs
    from silkfire.tracking.curve_logger import mlflow_logger
    from silkfire.tracking.plots import publish_curves
    from silkfire.tracking.datasets import log_dvc_dataset
    from silkfire.tracking.registry import log_trained_model
    from silkfire.train.dpo import train_dpo

    require_passed(cfg, root, "dpo")  # the feedback and pairs gates' verdicts vouch for these pairs
    pairs = gated_pairs(cfg, root)
    log_dvc_dataset(root, f"{cfg.paths.feedback}/pairs.jsonl", pairs, "silkie-pairs", context="train")
    out_dir = root / cfg.paths.dpo
    result = train_dpo(root / cfg.silkie.start_model, pairs, feedback_image_root(cfg, root),
                       settings(cfg), out_dir, callbacks=[mlflow_logger("dpo/")])
    publish_curves(out_dir / "history.csv", dpo_curves(result.history), root / cfg.paths.metrics, "dpo")
    metrics: dict[str, Any] = dict(result.metrics)
    if cfg.tracking.log_model:  # register_dpo registers it: registry names never retrain
        metrics["logged_model"] = log_trained_model(result.model_dir)
    return metrics


def summary(metrics: dict[str, Any]) -> str:
    parts = []
    for key in ("loss", "reward_accuracy", "eval_reward_accuracy", "reward_margin", "pairs_per_second"):
        if isinstance(metrics.get(key), (int, float)):
            parts.append(f"{key}={metrics[key]:.3g}")
    if metrics.get("resumed_from_step"):
        parts.append(f"resumed from step {metrics['resumed_from_step']} ({metrics.get('steps_run')} steps run)")
    if "logged_model" in metrics:
        parts.append("model logged")
    return " ".join(parts)


def settings(cfg: DictConfig) -> Any:
    """The DPO settings (``silkie.dpo``), parsed: :func:`check` runs this before any stage of a pipeline does."""
    from silkfire.train.dpo import DPOConfig

    return DPOConfig.from_mapping(cfg.silkie.dpo)


def check(cfg: DictConfig) -> None:
    """Parse the typed settings this stage reads (silkfire.stages.runner.check_config: before any stage runs)."""
    settings(cfg)
