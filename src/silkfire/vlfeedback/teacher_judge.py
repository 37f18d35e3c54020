"""A FIRE teacher as a VLFeedback judge (issue 18): the teacher the FIRE branch trains scores each response.

FIRE's teacher compares a student's answer with the ground truth and writes ``"Score: N.\\nFeedback: ..."`` with
N on 1-10 (silkfire.fire.prompts). As a judge it sees each completion of a record as a student turn
(``format_student("", response)``, the layout it was trained on) against the record's reference ``answer``, and
its score becomes the record's **Helpfulness** rating on VLFeedback's 1-5 scale: ``ceil(N / 2)`` (1-2 -> 1, ...,
9-10 -> 5). It gives one overall score, so Visual Faithfulness and Ethical Considerations are "N/A"; choosing it sets
``quality.vlfeedback.aspects`` to Helpfulness, which both the gate and the pairs stage read (the pair rule skips a
completion with any non-numeric rating among the aspects it reads: with all three, no pair at all). A reply without a score is "N/A"
and counted (``judge_unparsable``); its rationale quotes the reply.

Reference-based by design: a record without an ``answer`` (published VLFeedback prompts have none) is refused,
naming the record. The teacher is any :func:`silkfire.fire.teacher.build_teacher` config (``teacher:`` in
conf/silkie/judge/fire_teacher.yaml): ``trained`` (the fire_teacher stage's model folder), ``oracle`` (the world's
rule-based FIRE teacher; needs the world for scene graphs), or ``api``.

:func:`agreement` measures a judge against a reference judge on the same records: pairwise accuracy over the
completion pairs the reference orders (a tie of the judge counts 1/2) and Spearman's rho over all completions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from silkfire.vlfeedback.pair_rule import completion_score
from silkfire.vlfeedback.template import ASPECT_ORDER, NA
from silkfire.fire.text import TeacherInput, feedback_text, format_student, parse_score

TEACHER_JUDGE_KEYS = ("kind", "teacher")
ONE_SCORE = "The FIRE teacher gives one overall score, read as Helpfulness."
RATED_ASPECTS = ("Helpfulness",)  # what conf/silkie/judge/fire_teacher.yaml sets quality.vlfeedback.aspects to


def score_to_rating(score: int) -> int:
    """A FIRE score (1-10) on VLFeedback's 1-5 scale: ceil(score / 2), clipped."""
    return min(5, max(1, math.ceil(score / 2)))


class TeacherJudge:
    """Annotates records with a FIRE teacher's scores; see the module docstring."""

    name = "fire_teacher"

    def __init__(self, teacher: Any, *, scenes: Mapping[str, Any] | None = None):
        self.teacher = teacher
        self.scenes = scenes or {}
        self._counts = {"records": 0, "completions": 0, "unparsable": 0}

    def params(self) -> dict[str, Any]:
        return {"judge": self.name, **{f"teacher_{k}": v for k, v in self.teacher.describe().items()}}

    def metrics(self) -> dict[str, float]:
        return {f"judge_{key}": float(value) for key, value in self._counts.items()}

    def annotate(self, records: Sequence[Mapping[str, Any]], image_root: str | Path | None = None
                 ) -> list[dict[str, Any]]:
        items, where = [], []
        for index, record in enumerate(records):
            reference = record.get("answer")
            if not isinstance(reference, str) or not reference.strip():
                raise ValueError(f"fire_teacher judge: record {index} (id {record.get('id')!r}) has no reference "
                                 "'answer': FIRE's teacher scores against the ground truth (use the oracle or an API "
                                 "judge for prompts without one)")
            for position, completion in enumerate(record.get("completions") or []):
                items.append(TeacherInput(question=str(record.get("prompt", "")), groundtruth=reference,
                                          response=format_student("", str(completion.get("response", ""))),
                                          image=record.get("img_path"), scene=self.scenes.get(record.get("scene_id")),
                                          category=record.get("category"), family=record.get("family")))
                where.append((index, position))
        turns = self.teacher.judge(items, Path(image_root) if image_root else None) if items else []
        out = [{**record, "completions": [dict(c) for c in record.get("completions") or []]} for record in records]
        for (index, position), turn in zip(where, turns, strict=True):
            out[index]["completions"][position]["annotations"] = self._notes(turn)
        self._counts["records"] += len(records)
        self._counts["completions"] += len(items)
        return out

    def _notes(self, turn: str | None) -> dict[str, dict[str, str]]:
        score = parse_score(turn) if turn else None
        if score is None:
            self._counts["unparsable"] += 1
            quoted = (turn or "").strip().replace("\n", " ")[:200]
            helpfulness = {"Rating": NA, "Rationale": f"The teacher's reply has no score: {quoted!r}"}
        else:
            helpfulness = {"Rating": str(score_to_rating(score)),
                           "Rationale": f"Score {score}/10. {feedback_text(turn or '')}".strip()}
        notes = {aspect: {"Rating": NA, "Rationale": ONE_SCORE} for aspect in ASPECT_ORDER}
        notes["Helpfulness"] = helpfulness
        return notes


def make_teacher_judge(cfg: Mapping[str, Any], *, world_dir: str | Path | None, root: str | Path) -> TeacherJudge:
    """``kind: fire_teacher`` with ``teacher:`` a fire teacher config (its ``path`` relative to ``root``)."""
    from silkfire.fire.teacher import build_teacher

    unknown = sorted(set(cfg) - set(TEACHER_JUDGE_KEYS))
    if unknown:
        raise ValueError(f"fire_teacher judge: unknown key(s) {unknown}; keys are {list(TEACHER_JUDGE_KEYS)}")
    teacher_cfg = dict(cfg.get("teacher") or {})
    if not teacher_cfg:
        raise ValueError("fire_teacher judge: needs 'teacher' (a fire teacher config, e.g. {kind: trained, path: "
                         "models/fire_teacher/model, instruction: short})")
    scenes: dict[str, Any] = {}
    world = None
    if teacher_cfg.get("kind") == "oracle":
        if world_dir is None:
            raise ValueError("fire_teacher judge with the oracle teacher: needs the world folder (scene graphs)")
        from silkfire.vlfeedback.oracle_judge import load_world

        world, scenes = load_world(world_dir)
    return TeacherJudge(build_teacher(teacher_cfg, root=Path(root), world=world), scenes=scenes)


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties given their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (Pearson's r of the average ranks); NaN when either side is constant."""
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else float("nan")


def agreement(reference: Sequence[Mapping[str, Any]], judged: Sequence[Mapping[str, Any]],
              judged_aspects: Sequence[str] = RATED_ASPECTS) -> dict[str, float]:
    """How a judge's scores agree with a reference judge's on the same records (same order, same completions).
    A completion's score is the pair rule's (silkfire.vlfeedback.pair_rule.completion_score): the reference's over
    VLFeedback's three aspects, the judge's over ``judged_aspects`` (this judge rates Helpfulness only).

    ``pairwise_accuracy``: over the completion pairs of one record that the reference rates differently, the share
    the judge orders the same way (a judge tie counts 1/2); ``spearman``: rho over every completion both scored;
    ``judge_ties``: the share of those pairs the judge left tied."""
    if len(reference) != len(judged):
        raise ValueError(f"agreement: {len(reference)} reference records but {len(judged)} judged ones")
    xs, ys, pairs, agree, ties = [], [], 0, 0.0, 0
    for index, (ref, got) in enumerate(zip(reference, judged, strict=True)):
        if ref.get("id") != got.get("id"):
            raise ValueError(f"agreement: record {index} is {ref.get('id')!r} in the reference, {got.get('id')!r} "
                             "in the judged file")
        scored = [(a, b) for a, b in ((completion_score(c.get("annotations")),
                                       completion_score(d.get("annotations"), judged_aspects))
                                      for c, d in zip(ref.get("completions") or [], got.get("completions") or []))
                  if a is not None and b is not None]
        for a, b in scored:
            xs.append(a)
            ys.append(b)
        for i in range(len(scored)):
            for j in range(i + 1, len(scored)):
                (a1, b1), (a2, b2) = scored[i], scored[j]
                if a1 == a2:
                    continue
                pairs += 1
                if b1 == b2:
                    ties += 1
                    agree += 0.5
                elif (a1 > a2) == (b1 > b2):
                    agree += 1
    return {"completions": float(len(xs)), "pairs": float(pairs),
            "pairwise_accuracy": agree / pairs if pairs else float("nan"),
            "judge_ties": ties / pairs if pairs else float("nan"),
            "spearman": spearman(xs, ys) if len(xs) > 1 else float("nan")}
