"""Batched greedy generation of the next assistant turn of multi-turn image conversations (FIRE students/teachers).

silkfire.eval.answers answers single questions; a FIRE student continues a conversation (question, response,
feedback, ...). Prompts are rendered with the processor's chat template exactly as silkfire.train.data renders
training conversations (image block in the first user turn, text-only later turns), so a model trained on
:mod:`silkfire.fire.sft_data` samples sees the same layout at generation time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


def chat_messages(turns: Sequence[tuple[str, str | None]]) -> list[dict[str, Any]]:
    """Chat-template messages of ``(user, assistant)`` pairs; the image goes in the first user turn; a None
    assistant (the last pair only) leaves the conversation open for generation."""
    from silkfire.train.data import user_message

    messages: list[dict[str, Any]] = []
    for index, (user, assistant) in enumerate(turns):
        messages.append(user_message(user) if index == 0 else
                        {"role": "user", "content": [{"type": "text", "text": user}]})
        if assistant is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": assistant}]})
        elif index != len(turns) - 1:
            raise ValueError(f"turn {index}: only the last turn may lack its assistant text")
    return messages


def generate_chat(model: Any, processor: Any, conversations: Sequence[Sequence[tuple[str, str | None]]],
                  images: Sequence[str], image_root: Path, *, batch_size: int = 16, max_new_tokens: int = 160,
                  progress: bool = True, desc: str = "generate") -> list[str]:
    """Greedy next assistant turn of each conversation (its last pair must be ``(user, None)``), in input order.

    Left padding, so each row continues right after its prompt; decoded without special tokens and stripped.
    Conversations are sorted by prompt length inside the call to pad less, and returned in input order.
    """
    from silkfire.eval.answers import generate_batch, generation_mode
    from silkfire.train.data import load_image

    if len(conversations) != len(images):
        raise ValueError(f"{len(conversations)} conversations but {len(images)} images")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for index, turns in enumerate(conversations):
        if not turns or turns[-1][1] is not None:
            raise ValueError(f"conversation {index}: the last turn must be (user text, None), the turn to generate")
    prompts = [processor.apply_chat_template(chat_messages(turns), add_generation_prompt=True, tokenize=False)
               for turns in conversations]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    with generation_mode(model, processor):
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress):
            batch = order[start:start + batch_size]
            texts = generate_batch(model, processor, [prompts[i] for i in batch],
                                   [load_image(image_root, images[i]) for i in batch], max_new_tokens=max_new_tokens)
            for index, text in zip(batch, texts):
                outputs[index] = text
    return outputs
