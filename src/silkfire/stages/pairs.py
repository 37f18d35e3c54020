"""Stage `pairs`: VLFeedback's pair rule (mean of the 3 aspect ratings; ties dropped, non-numeric skipped; optional
margin and cap per prompt) on the gated records, then the `pairs` quality gate on the result -- under the same
rule (``silkie.pairs.rule`` becomes ``quality.pairs.rule``: silkie's repeated and equal texts pass, strict's not)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from silkfire.artefacts import PAIRS, PAIRS_GATE, gated_pairs  # noqa: F401 -- gated_pairs re-exported
from silkfire.stages import Dep, Out

PARAMS = ("quality", "silkie.pairs", "silkie.sample.source", "silkie.sample.image_root", "paths.world",
          "paths.feedback", "paths.reports")
DEPS = (
    Dep("${paths.feedback}/annotated.jsonl"),
    Dep("${paths.reports}/validate_feedback/verdict.json",
        "the verdict (md5 of the clean copy under policy filter)"),
    Dep("${paths.world}"),
)
OUTS = (
    Out("${paths.feedback}/pairs.jsonl"),
    Out("${paths.reports}/pairs"),
)
OUTPUT = PAIRS
REPORT = PAIRS_GATE


def gate_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``quality.pairs.rule`` = ``silkie.pairs.rule``: the gate checks what this rule may produce."""
    import copy

    gated = copy.deepcopy(cfg)
    with open_dict(gated):
        gated.quality.pairs.rule = str(cfg.silkie.pairs.rule)
    return gated


def run(cfg: DictConfig, root: Path) -> dict[str, Any]:
    from collections import Counter

    from silkfire.feedback.pairs import build_pairs
    from silkfire.feedback.records import iter_feedback
    from silkfire.io import write_jsonl
    from silkfire.artefacts import feedback_image_root, gated_feedback
    from silkfire.tracking.gates import run_file_gate

    options = cfg.silkie.pairs
    cap = options.max_pairs_per_prompt
    pairs, counts = build_pairs(iter_feedback(gated_feedback(cfg, root), require_annotations=True),
                                float(options.min_margin), None if cap is None else int(cap), rule=str(options.rule))
    if not pairs:
        raise ValueError(f"pairs: no pair could be built ({counts}); every prompt's responses tie or lack ratings")
    out = root / cfg.paths.feedback / OUTPUT
    write_jsonl(out, pairs)
    reports = root / cfg.paths.reports / REPORT
    reports.mkdir(parents=True, exist_ok=True)
    gate = run_file_gate("pairs", out, gate_config(cfg), root, reports, feedback_image_root(cfg, root))
    wins = Counter(pair["chosen_model"] for pair in pairs)
    losses = Counter(pair["rejected_model"] for pair in pairs)
    win_rate = {model: round(wins[model] / (wins[model] + losses[model]), 3) for model in sorted(wins | losses)}
    margin = sum(pair["chosen_score"] - pair["rejected_score"] for pair in pairs) / len(pairs)
    return {**counts, "mean_margin": round(margin, 4), "win_rate": win_rate, "gate": gate}


def summary(metrics: dict[str, Any]) -> str:
    return (f"{metrics.get('pairs', '?')} pairs from {metrics.get('records', '?')} records "
            f"({metrics.get('ties', 0)} ties, {metrics.get('skipped', 0)} skipped)")


def check(cfg: DictConfig) -> None:
    """Parse the typed settings this stage reads (silkfire.stages.runner.check_config: before any stage runs)."""
    from silkfire.quality import QualityConfig

    QualityConfig.from_mapping(gate_config(cfg).quality)
