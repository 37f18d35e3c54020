"""Student and teacher SFT sets from FIRE dialogues, as FIRE builds them (its LLaVA-format files were deleted
upstream, so they are rebuilt from the raw dialogues).

Output records (JSONL, :func:`write_sft`) carry the conversation as ``turns``: a list of ``[user, assistant]``
pairs -- exactly the ``(question, answer)`` pairs that silkfire.train.data renders with the processor's chat
template (image block in the first user turn; labels on every assistant turn and its closing token)::

    {"id": "<n>/student", "image": "images/x.png", "kind": "student", "source": "...",
     "turns": [["How many circles are there?", "Thought: ...\\nAnswer: 1"],
               ["You counted too few circles; look at the bottom row again.", "Thought: ...\\nAnswer: 2"]],
     "question": "How many circles are there?", "answer": "Thought: ...\\nAnswer: 1"}

- student (one sample per dialogue): user ``{question}`` (FIRE's ``<image>\\n{question}``; our template places the
  image) -> response 1; user = the teacher's Feedback text (score removed) -> response 2; ...; the last teacher
  turn is not part of it (no response follows). Loss on every assistant turn (FIRE).
- teacher (one sample per teacher turn; the teacher's history is reset each turn):
  user ``"Question: {q}\\nGroundtruth: {gt}\\n{instruction}\\n{student response}"`` -> ``"Score: N.\\nFeedback: ..."``
  (silkfire.fire.prompts.teacher_prompt; ``instruction="short"`` for small-context models -- prompt the trained
  teacher with the same). A teacher turn without a parsable score is left out (it would teach
  the format wrong; counted).

``question``/``answer`` repeat the first pair so single-turn readers (silkfire.train.data.encode_sft_records
today) can read the records; a multi-turn student sample needs the trainer to encode ``turns`` -- all of them
(the encoder's ``conversation_pieces(processor, turns)`` takes exactly this list). Teacher samples are single
turn, so the existing encoder trains them as they are (use ``turns_per_sample: 1``: packing would mix turns of
different dialogues into one history, which FIRE's teacher never sees).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from silkfire.fire.prompts import student_turns, teacher_prompt
from silkfire.fire.records import FireDialogue
from silkfire.fire.text import parse_score
from silkfire.io import write_jsonl

SFT_KINDS = ("student", "teacher")


def _record(ident: str, dialogue: FireDialogue, kind: str, turns: Sequence[tuple[str, str]]) -> dict[str, Any]:
    return {"id": ident, "image": dialogue.image, "kind": kind, "source": dialogue.source,
            "turns": [[user, answer] for user, answer in turns],
            "question": turns[0][0], "answer": turns[0][1]}


def student_samples(dialogues: Iterable[FireDialogue], *, format_hint: bool = False) -> list[dict[str, Any]]:
    """One multi-turn sample per dialogue (module docstring). ``id`` is ``<dialogue index>/student``."""
    samples = []
    for index, dialogue in enumerate(dialogues):
        pairs = student_turns(dialogue.question, dialogue.responses, dialogue.feedbacks[:-1], format_hint=format_hint)
        samples.append(_record(f"{index}/student", dialogue, "student", [(u, a or "") for u, a in pairs]))
    return samples


def teacher_samples(dialogues: Iterable[FireDialogue], instruction: str = "fire") -> tuple[list[dict[str, Any]], int]:
    """One single-turn sample per teacher turn with a parsable score; returns (samples, turns left out).
    ``id`` is ``<dialogue index>/teacher/<turn number>``; ``instruction``: fire | short (silkfire.fire.prompts)."""
    samples, skipped = [], 0
    for index, dialogue in enumerate(dialogues):
        for number, (response, turn) in enumerate(zip(dialogue.responses, dialogue.feedbacks), start=1):
            if parse_score(turn) is None:
                skipped += 1
                continue
            prompt = teacher_prompt(dialogue.question, dialogue.groundtruth, response, instruction)
            samples.append(_record(f"{index}/teacher/{number}", dialogue, "teacher", [(prompt, turn.strip())]))
    return samples, skipped


def build_sft_sets(dialogues: Sequence[FireDialogue], out_dir: Path, *, format_hint: bool = False,
                   instruction: str = "fire") -> dict[str, Any]:
    """Write ``student.jsonl`` and ``teacher.jsonl`` into ``out_dir``; returns their counts."""
    students = student_samples(dialogues, format_hint=format_hint)
    teachers, skipped = teacher_samples(dialogues, instruction)
    out_dir = Path(out_dir)
    return {
        "student_samples": write_sft(out_dir / "student.jsonl", students),
        "student_turns": sum(len(sample["turns"]) for sample in students),
        "teacher_samples": write_sft(out_dir / "teacher.jsonl", teachers),
        "teacher_unparsable_skipped": skipped,
    }


def write_sft(path: Path, samples: Iterable[dict[str, Any]]) -> int:
    """Write SFT samples as JSONL; returns the count."""
    return write_jsonl(path, samples)


def sample_turns(sample: dict[str, Any]) -> list[tuple[str, str]]:
    """The ``(user, assistant)`` pairs of an SFT sample (what silkfire.train.data.conversation_pieces takes)."""
    return [(str(user), str(answer)) for user, answer in sample["turns"]]


__all__ = ["SFT_KINDS", "build_sft_sets", "sample_turns", "student_samples", "teacher_samples",
           "write_sft"]
