"""The prompts of FIRE's student and teacher, shared by the dialogue loop, the teachers and the SFT builders.

Teacher (upstream MM-FIRE/FIRE, the FIRE-1M generation script; the history is reset at every teacher turn):
three user messages -- ``"Question: {question}\\nGroundtruth: {groundtruth}"``, then :data:`TEACHER_INSTRUCTION`
(verbatim), then the student's last response -- and the teacher answers ``"Score: N.\\nFeedback: ..."``.
The API teacher sends these as three user messages (image in the first); a local model (one user turn per
sample in silkfire.train.data's format) gets them joined by newlines: :func:`teacher_prompt`.

Student: the first user turn is the question (image attached), every later user turn is the teacher's
*Feedback text only* (never the score, never the ground truth); assistant turns are the student's responses.
:func:`student_turns` gives the ``(user, assistant)`` pairs that silkfire.train.data renders.
"""

from __future__ import annotations

from collections.abc import Sequence

from silkfire.fire.text import feedback_text

IMAGE_TOKEN = "<image>"

TEACHER_INSTRUCTION = (
    "Please compare my answer with the groundtruth answer and provide helpful, detailed, and polite feedback to "
    "help me improve my answer.\nFormulate the feedback as:\n'''\nScore: <compare my answer with the groundtruth "
    "answer in terms of accuracy, relevance, helpfulness, and level of detail, and provide an overall score on a "
    "scale of 1 to 10, where a higher score indicates better overall performance.>\nFeedback: <provide feedback "
    "on my answer. Do NOT directly tell the groundtruth answer. The feedback should identify which parts of my "
    "answer are incorrect, what is missing in my answer, and how to improve my answer.>\n'''"
)
# A compact variant for small models with short contexts (the tiny world model's tokenizer spends ~400 tokens
# on the full instruction). Train and prompt a teacher with the same one (``instruction`` options below).
SHORT_TEACHER_INSTRUCTION = ("Compare my answer with the groundtruth. Reply with 'Score: <1 to 10>.' and "
                             "'Feedback: <what is wrong and how to improve; do NOT tell the groundtruth>'.")
TEACHER_INSTRUCTIONS = {"fire": TEACHER_INSTRUCTION, "short": SHORT_TEACHER_INSTRUCTION}
QUESTION_TEMPLATE = "Question: {question}\nGroundtruth: {groundtruth}"

# Appended to the question for students not trained on FIRE's format (API models, untrained checkpoints).
STUDENT_FORMAT_HINT = "\nAnswer in this form:\nThought: <your reasoning>\nAnswer: <your final answer>"


def plain_question(question: str) -> str:
    """The question without LLaVA's ``<image>`` placeholder (published questions start with ``"<image>\\n"``);
    our prompts attach the image through the chat template instead."""
    text = question.replace(IMAGE_TOKEN, "")
    return text.strip()


def teacher_instruction(name: str) -> str:
    """``fire`` (the upstream text, default) or ``short`` (:data:`SHORT_TEACHER_INSTRUCTION`)."""
    if name not in TEACHER_INSTRUCTIONS:
        raise ValueError(f"teacher instruction must be one of {sorted(TEACHER_INSTRUCTIONS)}, got {name!r}")
    return TEACHER_INSTRUCTIONS[name]


def teacher_messages(question: str, groundtruth: str, response: str, instruction: str = "fire") -> list[str]:
    """The teacher's three user texts in upstream order: question + ground truth, instruction, student response."""
    return [QUESTION_TEMPLATE.format(question=plain_question(question), groundtruth=groundtruth.strip()),
            teacher_instruction(instruction), response.strip()]


def teacher_prompt(question: str, groundtruth: str, response: str, instruction: str = "fire") -> str:
    """The teacher's input as one user turn (the three texts of :func:`teacher_messages` joined by newlines)."""
    return "\n".join(teacher_messages(question, groundtruth, response, instruction))


def student_turns(question: str, responses: Sequence[str], teacher_turns: Sequence[str],
                  format_hint: bool = False) -> list[tuple[str, str | None]]:
    """The student's conversation as ``(user, assistant)`` pairs: ``(question, r1), (feedback1, r2), ...``.

    ``teacher_turns`` are full teacher texts; only their Feedback part is shown (stripped). With one teacher turn
    fewer than responses the conversation is complete (an SFT sample: the last teacher turn, which no response
    follows, is not part of it). With as many, the last pair is ``(last feedback, None)``: the prompt of the next
    response. ``format_hint`` appends :data:`STUDENT_FORMAT_HINT` to the question.
    """
    if len(teacher_turns) not in (len(responses), len(responses) - 1):
        raise ValueError(f"{len(responses)} responses and {len(teacher_turns)} teacher turns do not alternate "
                         "(expected as many, or one teacher turn fewer)")
    users = [plain_question(question) + (STUDENT_FORMAT_HINT if format_hint else "")]
    users += [feedback_text(turn).strip() for turn in teacher_turns]
    return [(user, responses[index] if index < len(responses) else None) for index, user in enumerate(users)]
