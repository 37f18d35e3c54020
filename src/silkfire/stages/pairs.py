"""Stage `pairs`: VLFeedback's pair rule (mean of the 3 aspect ratings; ties dropped, non-numeric skipped; optional
margin and cap per prompt) on the gated records, then the `pairs` quality gate on the result -- under the same
rule (``silkie.pairs.rule`` becomes ``quality.pairs.rule``: silkie's repeated and equal texts pass, strict's not).

Alignment rounds (silkfire.rounds) add a replay share of earlier rounds' gated pairs (``silkie.pairs.replay``: files
pinned by md5, so DVC re-runs the stage exactly when they change); replayed pairs pass this round's gate too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from silkfire.artefacts import PAIRS, PAIRS_GATE, gated_pairs  # noqa: F401 -- gated_pairs re-exported
from silkfire.stages import Dep, Out

PARAMS = ("quality", "silkie.pairs", "silkie.seed", "silkie.sample.source", "silkie.sample.image_root", "paths.world",
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

    from silkfire.vlfeedback.pair_rule import build_pairs
    from silkfire.vlfeedback.records import iter_feedback
    from silkfire.io import write_jsonl
    from silkfire.artefacts import feedback_image_root, gated_feedback
    from silkfire.tracking.gates import run_file_gate

    options = cfg.silkie.pairs
    cap = options.max_pairs_per_prompt
    pairs, counts = build_pairs(iter_feedback(gated_feedback(cfg, root), require_annotations=True),
                                float(options.min_margin), None if cap is None else int(cap), rated_aspects(cfg),
                                rule=str(options.rule))
    if not pairs:
        raise ValueError(f"pairs: no pair could be built ({counts}); every prompt's responses tie or lack ratings")
    replayed = replay(cfg, root, pairs)
    counts = {**counts, "new_pairs": len(pairs), "replayed": len(replayed), "pairs": len(pairs) + len(replayed)}
    pairs = pairs + replayed
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


def rated_aspects(cfg: DictConfig) -> tuple[str, ...]:
    """The aspects the pair rule averages: those the feedback gate checks (``quality.vlfeedback.aspects``; a judge
    that rates fewer, the FIRE teacher, narrows both)."""
    return tuple(cfg.quality.vlfeedback.aspects)


def replay(cfg: DictConfig, root: Path, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``silkie.pairs.replay``: the earlier rounds' pairs drawn into this round (none by default)."""
    from silkfire.vlfeedback.pair_rule import replay_pairs
    from silkfire.io import file_digest, read_records

    options = cfg.silkie.pairs.get("replay") or {}
    share, sources = float(options.get("share", 0.0)), list(options.get("sources") or [])
    if share == 0.0 or not sources:
        return []
    earlier = []
    for index, source in enumerate(sources):
        where = f"silkie.pairs.replay.sources[{index}]"
        path = root / str(source["path"])
        if not path.is_file():
            raise FileNotFoundError(f"{where}: {path} is missing (silkfire rounds archives each round's pairs under "
                                    "silkie.rounds.archive_dir; restore it or start a new rounds series)")
        if (digest := file_digest(path)) != str(source["md5"]):
            raise ValueError(f"{where}: {path} has md5 {digest}, the config pins {source['md5']}: the file changed "
                             "after its round archived it")
        earlier.append((str(source.get("label") or f"replay{index}"), read_records(path)))
    return replay_pairs(new, earlier, share, int(cfg.silkie.seed))


def summary(metrics: dict[str, Any]) -> str:
    replayed = f", +{metrics['replayed']} replayed" if metrics.get("replayed") else ""
    return (f"{metrics.get('pairs', '?')} pairs from {metrics.get('records', '?')} records "
            f"({metrics.get('ties', 0)} ties, {metrics.get('skipped', 0)} skipped){replayed}")


def check(cfg: DictConfig) -> None:
    """Parse the typed settings this stage reads (silkfire.stages.runner.check_config: before any stage runs)."""
    from silkfire.quality import QualityConfig

    QualityConfig.from_mapping(gate_config(cfg).quality)
