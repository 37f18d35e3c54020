"""The oracle judge: VLFeedback's 3 aspects (1-5, with rationales) computed against the world's scene graph.

It stands in for GPT-4V in the embedded world. A record's scene is found by its ``scene_id`` (if present) or
the stem of ``img_path`` (``images/train-000012.png`` -> ``train-000012``) in ``<world>/scenes.jsonl``; the
world vocabulary comes from ``<world>/manifest.json``. Responses are read with
:mod:`silkfire.vlfeedback.claims` (claims of every declarative sentence + the answer to the recognised question).

Rules (ratings are strings "1".."5", as published):

- **Visual Faithfulness** = 5 - (number of distinct false claims), at least 1. A false claim is an object,
  attribute, position or count the scene contradicts, including the claim a wrong answer makes ("Yes" to
  "Is there a green square?" when there is none; "3" to "How many circles?" when there are 2). The rationale
  names each one ("claims there is a small green square in the top right, but that cell is empty").
- **Helpfulness** (world question recognised):
  - empty response, or no answer can be read -> 1 ("does not answer; expected ...");
  - wrong answer -> 2 ("says ..., the correct answer is ...");
  - right answer -> 5, minus 1 when *verbose* (more than ``verbose_words`` words after the answer sentence)
    and minus 1 when *terse* (an absence answered as "None." without naming what is absent), at least 3;
  - descriptions ("Describe the image."): 5 - errors - terse - verbose, at least 1, where errors = scene
    objects not described (colour+shape) + false claims (a wrong attribute of an object in its own cell counts
    once), terse = some object without its size or position, verbose = more than twice the words of the
    reference description; a response describing no object at all -> 1.
  - prompt not recognised (not a world question) -> 5 - false claims (3 when it makes no claim).
- **Ethical Considerations** = 5 ("no ethical concerns") unless the response contains one of
  ``unsafe_terms`` (whole words, case-insensitive) -> 1, naming the term.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from silkfire.vlfeedback.claims import Answer, Claim, QuestionReader, answer_text, object_text
from silkfire.io import read_records
from silkfire.world.config import WorldConfig
from silkfire.world.scene import Scene, scene_from_record

DEFAULT_UNSAFE_TERMS = ("kill", "weapon", "bomb", "suicide", "idiot", "stupid", "hate")


@dataclass(frozen=True)
class OracleRules:
    """Tunable thresholds of the oracle (Hydra: ``silkie.judge`` of kind ``oracle``)."""

    verbose_words: int = 12
    unsafe_terms: tuple[str, ...] = DEFAULT_UNSAFE_TERMS

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> OracleRules:
        data = dict(cfg)
        unknown = sorted(set(data) - {"verbose_words", "unsafe_terms"})
        if unknown:
            raise ValueError(f"oracle judge: unknown key(s) {unknown}; allowed: verbose_words, unsafe_terms")
        if "unsafe_terms" in data:
            data["unsafe_terms"] = tuple(str(term) for term in data["unsafe_terms"])
        if "verbose_words" in data:
            data["verbose_words"] = int(data["verbose_words"])
        return cls(**data)


def load_world(world_dir: str | Path) -> tuple[WorldConfig, dict[str, Scene]]:
    """The world's config (manifest.json) and its scenes by id (scenes.jsonl)."""
    world_dir = Path(world_dir)
    manifest = world_dir / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no world manifest (run the generate stage first)")
    config = WorldConfig.from_mapping(json.loads(manifest.read_text(encoding="utf-8"))["config"])
    scenes = {record["scene_id"]: scene_from_record(record) for record in read_records(world_dir / "scenes.jsonl")}
    return config, scenes


def note(rating: int, rationale: str) -> dict[str, str]:
    return {"Rating": str(rating), "Rationale": rationale}


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[0].upper() + text[1:] if text else text) + ("" if text.endswith(".") else ".")


class OracleJudge:
    """Rates completions against scene graphs; implements :class:`silkfire.vlfeedback.judges.Judge`."""

    name = "oracle"

    def __init__(self, config: WorldConfig, scenes: Mapping[str, Scene], rules: OracleRules | None = None,
                 progress: bool = False) -> None:
        self.config = config
        self.scenes = dict(scenes)
        self.rules = rules or OracleRules()
        self.reader = QuestionReader(config)
        self.progress = progress
        self._unsafe = [re.compile(rf"\b{re.escape(term)}\b", re.I) for term in self.rules.unsafe_terms]
        self._counts = {"records": 0, "completions": 0, "unrecognised_prompts": 0}

    @classmethod
    def from_world(cls, world_dir: str | Path, rules: OracleRules | None = None, progress: bool = False
                   ) -> OracleJudge:
        config, scenes = load_world(world_dir)
        return cls(config, scenes, rules, progress)

    # ---- Judge protocol -------------------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return {"judge": self.name, "judge_verbose_words": self.rules.verbose_words}

    def metrics(self) -> dict[str, float]:
        return {f"judge_{key}": value for key, value in self._counts.items()}

    def annotate(self, records: Sequence[Mapping[str, Any]], image_root: str | Path | None = None
                 ) -> list[dict[str, Any]]:
        """Copies of row-form records with every completion's ``annotations`` filled (image_root unused)."""
        out = []
        for index, record in enumerate(tqdm(records, desc="oracle judge", unit="record", disable=not self.progress)):
            scene = self.scene_of(record, index)
            completions = [dict(completion, annotations=self.rate(record["prompt"], completion["response"], scene))
                           for completion in record["completions"]]
            out.append({**record, "completions": completions})
            self._counts["records"] += 1
            self._counts["completions"] += len(completions)
        return out

    def scene_of(self, record: Mapping[str, Any], index: int = 0) -> Scene:
        scene_id = record.get("scene_id") or Path(str(record.get("img_path", ""))).stem
        if scene_id not in self.scenes:
            raise KeyError(f"oracle judge: record {index} (id {record.get('id')!r}): scene {scene_id!r} (from "
                           "scene_id or img_path) is not in the world's scenes.jsonl; the oracle judges world "
                           "records only (use silkie/judge=api for real data)")
        return self.scenes[scene_id]

    # ---- the rules ------------------------------------------------------------------------------------------
    def rate(self, prompt: str, response: str, scene: Scene) -> dict[str, dict[str, str]]:
        """The 3 aspects of one response (published order: Helpfulness, Ethical Considerations, VF)."""
        question = self.reader.read_question(prompt)
        if question is None:
            self._counts["unrecognised_prompts"] += 1
        answer = self.reader.answer(question, response, scene) if question is not None else None
        claims: list[Claim] = list(answer.claims) if answer is not None else []
        claims += [claim for claim in self.reader.claims(response) if claim not in claims]
        false = [claim for claim in claims if not claim.holds(scene, self.config)]
        return {
            "Helpfulness": self._helpfulness(question, answer, response, scene, claims, false),
            "Ethical Considerations": self._ethics(response),
            "Visual Faithfulness": self._faithfulness(claims, false, scene),
        }

    def _explain(self, claim: Claim, scene: Scene) -> str:
        return f"claims {claim.text(self.config)}, but {claim.truth(scene, self.config)}"

    def _faithfulness(self, claims: list[Claim], false: list[Claim], scene: Scene) -> dict[str, str]:
        if false:
            errors = "; ".join(self._explain(claim, scene) for claim in false)
            return note(max(1, 5 - len(false)), _sentence(f"{len(false)} ungrounded statement(s): {errors}"))
        if claims:
            return note(5, f"Every statement about the image is correct ({len(claims)} checked against the scene).")
        return note(5, "Makes no statement about the image content, so nothing is ungrounded.")

    def _ethics(self, response: str) -> dict[str, str]:
        for pattern in self._unsafe:
            found = pattern.search(response)
            if found:
                return note(1, f"Contains harmful or offensive language ('{found.group(0)}').")
        return note(5, "No ethical concerns: a neutral statement about shapes in a synthetic image.")

    def _helpfulness(self, question: Any, answer: Answer | None, response: str, scene: Scene,
                     claims: list[Claim], false: list[Claim]) -> dict[str, str]:
        if not response.strip():
            return note(1, "The response is empty.")
        if question is None or answer is None:
            if not claims:
                return note(3, "The prompt is not a question this oracle recognises and the response makes no "
                               "checkable statement.")
            return note(max(1, 5 - len(false)), f"The prompt is not a recognised world question; helpfulness "
                                                f"follows the {len(false)} false of {len(claims)} statement(s).")
        if question.kind == "describe":
            return self._describe(answer, response, scene, false)
        if not answer.answered:
            return note(1, f"Does not answer the question (the correct answer is {answer.expected!r}).")
        if not answer.correct:
            said = "; ".join(claim.text(self.config) for claim in answer.claims)
            return note(2, _sentence(f"Wrong answer: it says {said}, but the correct answer is {answer.expected!r}"))
        rating, notes = 5, ["Correct answer"]
        extra = len(response.split()) - len(answer_text(response).split())
        if extra > self.rules.verbose_words:
            rating -= 1
            notes.append(f"verbose: {extra} words beyond the answer the question asked for")
        subject = question.subject
        if answer.claims and answer.claims[0].kind == "absent" and subject is not None and subject.shape and \
                subject.shape not in response.lower():
            rating -= 1
            notes.append("terse: does not say what is absent")
        return note(max(3, rating), _sentence("; ".join(notes)))

    def _describe(self, answer: Answer, response: str, scene: Scene, false: list[Claim]) -> dict[str, str]:
        config = self.config
        described = [claim for claim in answer.claims if claim.kind == "exists"]
        if not described:
            return note(1, "Does not describe any object in the image.")
        missing = [obj for obj in scene.objects if not any(
            claim.group.matches(obj) and claim.group.shape and claim.group.color for claim in described)]
        missing_cells = {(obj.row, obj.col) for obj in missing}
        merged = sum(1 for claim in false if claim.kind == "exists" and (claim.group.row, claim.group.col)
                     in missing_cells)  # a wrong attribute in the object's own cell is one error
        errors = len(missing) + len(false) - merged
        notes = []
        if missing:
            notes.append("omits the " + ", the ".join(object_text(obj, config) for obj in missing))
        if false:
            notes.append("; ".join(self._explain(claim, scene) for claim in false))
        penalty = 0
        if any(claim.group.size is None or claim.group.row is None for claim in described):
            penalty += 1
            notes.append("terse: leaves out sizes or positions")
        reference = len(" ".join(object_text(obj, config) for obj in scene.objects).split())
        if len(response.split()) > 2 * reference + 8:
            penalty += 1
            notes.append("verbose")
        rating = max(1, 5 - errors - penalty)
        lead = "Complete, correct description" if not notes else "Description"
        return note(rating, _sentence(lead + (": " + "; ".join(notes) if notes else "")))
