"""Preference pairs from annotated VLFeedback records -- the rule of the released VLFeedback/Silkie code.

For every record, all C(n, 2) pairs of its completions (n = 4 -> 6 pairs) are considered. Two rules
(``rule``):

- ``silkie`` (default; vlf-silkie's run_dpo.py): score of a completion = unweighted mean of the aspect ratings
  it has (Helpfulness, Visual Faithfulness, Ethical Considerations; :data:`silkfire.vlfeedback.records.ASPECTS`)
  -- a missing aspect is left out of the mean, as the released code averages over the aspects present; a
  non-numeric rating (``"N/A"``, ``""``) or no rating at all leaves the completion without a score; pairs
  repeating a (chosen, rejected) text, or of two equal texts rated differently, are KEPT as the released code
  keeps them (``duplicates`` stays 0);
- ``strict`` (our stricter variant): all 3 aspects are required (a missing one leaves the completion without
  a score), and a pair whose (image, prompt, chosen text, rejected text) was already formed -- two models gave
  the same response, common with short world answers ("Yes") -- or whose two texts are the same is dropped
  (``duplicates``): the same example twice would weigh double in DPO and the pairs quality gate refuses it
  (whitespace is collapsed when comparing texts).

Both: a completion without a score is left out of every pair; each pair not formed because of it counts in
``skipped``; the higher score is ``chosen``; exact ties are dropped (``ties``). Options (defaults reproduce the
paper: no margin, no cap): ``min_margin`` keeps only pairs with ``chosen_score - rejected_score > min_margin``
(the dropped ones count in ``below_margin``, ties are still counted as ties); ``max_pairs_per_prompt`` keeps a
record's pairs with the largest margins (stable: earlier (i, j) first on equal margins), the rest count in
``over_cap``.

Pair record (the ``pairs`` kind of the quality gate, src/silkfire/quality/pairs.py)::

    {"id": "<record id>/<i>-<j>", "source_id": "<record id>", "prompt", "img_path",
     "chosen", "rejected", "chosen_score": float, "rejected_score": float,
     "chosen_model", "rejected_model"}

(``i``/``j`` = indices of the chosen/rejected completion in the record.) Extra record keys listed in
``carry`` (default ``("scene_id",)``, when present) are copied onto each pair.

``counts`` = ``{"records", "pairs", "ties", "skipped", "below_margin", "over_cap", "duplicates"}``;
``silkfire pairs IN --out OUT`` prints the first four as JSON (plus ``below_margin`` / ``over_cap`` when the
option is set, and ``duplicates`` when there were any).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from silkfire.vlfeedback.records import ASPECTS, FeedbackFormatError, rating_value, read_feedback
from silkfire.io import write_jsonl

COUNT_KEYS = ("records", "pairs", "ties", "skipped", "below_margin", "over_cap", "duplicates")
RULES = ("silkie", "strict")


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise ValueError(f"pairs: rule must be one of {list(RULES)}, got {rule!r}")
    return rule


def completion_score(annotations: Mapping[str, Any] | None, aspects: Sequence[str] = ASPECTS,
                     rule: str = "silkie") -> float | None:
    """Mean of the aspect ratings; ``None`` when any rating present is non-numeric, or (strict) an aspect is
    missing, or (silkie) no aspect is there at all."""
    check_rule(rule)
    if not isinstance(annotations, Mapping):
        return None
    values = []
    for aspect in aspects:
        note = annotations.get(aspect)
        if note is None and rule == "silkie":
            continue  # the released code averages over the aspects present
        value = rating_value(note.get("Rating")) if isinstance(note, Mapping) else None
        if value is None:
            return None
        values.append(value)
    return sum(values) / len(values) if values else None


def _text(value: str) -> str:
    return " ".join(value.split())


def record_pairs(
    record: Mapping[str, Any],
    min_margin: float = 0.0,
    max_pairs_per_prompt: int | None = None,
    aspects: Sequence[str] = ASPECTS,
    carry: Sequence[str] = ("scene_id",),
    seen: set[tuple[str, str, str, str]] | None = None,
    *,
    rule: str = "silkie",
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The pairs of one row-form record and its counts (``records`` = 1); ``seen`` holds the (image, prompt,
    chosen, rejected) keys formed so far (shared across records by :func:`build_pairs`; strict rule only)."""
    seen = set() if seen is None else seen
    counts = dict.fromkeys(COUNT_KEYS, 0)
    counts["records"] = 1
    completions = record["completions"]
    scores = [completion_score(completion.get("annotations"), aspects, rule) for completion in completions]
    kept: list[tuple[float, dict[str, Any]]] = []
    for i, j in itertools.combinations(range(len(completions)), 2):
        if scores[i] is None or scores[j] is None:
            counts["skipped"] += 1
            continue
        if scores[i] == scores[j]:
            counts["ties"] += 1
            continue
        high, low = (i, j) if scores[i] > scores[j] else (j, i)
        margin = scores[high] - scores[low]
        if margin <= min_margin:
            counts["below_margin"] += 1
            continue
        key = (record["img_path"], record["prompt"], _text(completions[high]["response"]),
               _text(completions[low]["response"]))
        if rule == "strict" and (key in seen or key[2] == key[3]):
            counts["duplicates"] += 1
            continue
        seen.add(key)
        pair = {
            "id": f"{record['id']}/{high}-{low}",
            "source_id": record["id"],
            "prompt": record["prompt"],
            "img_path": record["img_path"],
            "chosen": completions[high]["response"],
            "rejected": completions[low]["response"],
            "chosen_score": scores[high],
            "rejected_score": scores[low],
            "chosen_model": completions[high]["model"],
            "rejected_model": completions[low]["model"],
        }
        pair.update({key: record[key] for key in carry if key in record})
        kept.append((margin, pair))
    if max_pairs_per_prompt is not None and len(kept) > max_pairs_per_prompt:
        order = sorted(range(len(kept)), key=lambda index: -kept[index][0])  # sorted() is stable
        chosen = sorted(order[:max_pairs_per_prompt])
        counts["over_cap"] = len(kept) - len(chosen)
        kept = [kept[index] for index in chosen]
    counts["pairs"] = len(kept)
    return [pair for _, pair in kept], counts


def build_pairs(
    records: Iterable[Mapping[str, Any]],
    min_margin: float = 0.0,
    max_pairs_per_prompt: int | None = None,
    aspects: Sequence[str] = ASPECTS,
    carry: Sequence[str] = ("scene_id",),
    *,
    rule: str = "silkie",
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """All pairs of row-form records (see :func:`silkfire.vlfeedback.records.read_feedback`) and summed counts;
    ``rule``: silkie (the released code's) | strict (module docstring)."""
    check_rule(rule)
    if min_margin < 0:
        raise ValueError(f"pairs: min_margin must be >= 0, got {min_margin}")
    if max_pairs_per_prompt is not None and max_pairs_per_prompt < 1:
        raise ValueError(f"pairs: max_pairs_per_prompt must be >= 1 or None, got {max_pairs_per_prompt}")
    pairs: list[dict[str, Any]] = []
    totals = dict.fromkeys(COUNT_KEYS, 0)
    seen: set[tuple[str, str, str, str]] = set()
    for record in records:
        found, counts = record_pairs(record, min_margin, max_pairs_per_prompt, aspects, carry, seen, rule=rule)
        pairs.extend(found)
        for key in COUNT_KEYS:
            totals[key] += counts[key]
    return pairs, totals


def build_pairs_file(
    source: str | Path,
    out: str | Path,
    min_margin: float = 0.0,
    max_pairs_per_prompt: int | None = None,
    *,
    rule: str = "silkie",
) -> dict[str, int]:
    """Read a VLFeedback file (either layout; annotations required), write the pairs as JSONL, return counts.

    Every bad record of the file is reported at once (:class:`silkfire.vlfeedback.records.FeedbackErrors`, each
    with file, line/record and field) and nothing is written; a file without records is an error too."""
    check_rule(rule)
    # the reader's "annotated" check also requires every aspect: the silkie rule averages the ones present,
    # so it only asks that each completion be annotated
    records = read_feedback(source, require_annotations=rule == "strict", all_errors=True)
    if not records:
        raise FeedbackFormatError(f"{source}: no records (an empty file?): nothing to build pairs from")
    if rule == "silkie":
        _require_annotations(source, records)
    pairs, counts = build_pairs(records, min_margin, max_pairs_per_prompt, rule=rule)
    write_jsonl(out, pairs)
    return counts


def _require_annotations(source: str | Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Every completion annotated (aspects may be missing); the errors name file, record and field."""
    errors = [f"{source}: record {index} (id {record['id']!r}): completions[{j}].annotations: missing (the "
              "record is not annotated)"
              for index, record in enumerate(records)
              for j, completion in enumerate(record["completions"]) if completion.get("annotations") is None]
    if errors:
        raise FeedbackFormatError("\n".join(errors))


def replay_pairs(new: Sequence[Mapping[str, Any]], earlier: Sequence[tuple[str, Sequence[Mapping[str, Any]]]],
                 share: float, seed: int) -> list[dict[str, Any]]:
    """Earlier rounds' pairs to mix into this round's ``new`` ones (alignment rounds' replay): a seeded draw without
    replacement making ``share`` of the final set, from ``earlier`` = [(round label, pairs)]. A pair equal to a new
    one (image, prompt, chosen, rejected) or drawn already is never drawn; ids get the round label as a prefix
    (``round1/<id>``) so they stay unique beside this round's."""
    import random

    if not 0.0 <= share < 1.0:
        raise ValueError(f"silkie.pairs.replay.share must be in [0, 1), got {share}")
    if share == 0.0 or not new:
        return []

    def key(pair: Mapping[str, Any]) -> tuple[Any, ...]:
        return pair["img_path"], pair["prompt"], _text(pair["chosen"]), _text(pair["rejected"])

    seen = {key(pair) for pair in new}
    candidates: list[dict[str, Any]] = []
    for label, pairs in earlier:
        for pair in pairs:
            if key(pair) not in seen:
                seen.add(key(pair))
                candidates.append(dict(pair) | {"id": f"{label}/{pair['id']}"})
    wanted = round(share / (1.0 - share) * len(new))
    return random.Random(seed).sample(candidates, min(wanted, len(candidates)))
