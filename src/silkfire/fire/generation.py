"""Batched greedy generation of the next assistant turn of multi-turn image conversations (FIRE students/teachers).

silkfire.eval.generate answers single questions; a FIRE student continues a conversation (question, response,
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
    import torch

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
    tokenizer = processor.tokenizer
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    outputs: list[str] = [""] * len(prompts)
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress):
            batch = order[start:start + batch_size]
            pictures = [load_image(image_root, images[i]) for i in batch]
            inputs = processor(text=[prompts[i] for i in batch], images=pictures, return_tensors="pt", padding=True)
            inputs = {key: value.to(device=device, dtype=dtype) if key == "pixel_values" else value.to(device)
                      for key, value in inputs.items()}
            with torch.inference_mode():
                output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                        pad_token_id=tokenizer.pad_token_id)
            texts = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            for index, text in zip(batch, texts):
                outputs[index] = text.strip()
    finally:
        tokenizer.padding_side = previous_side
        model.train(was_training)
    return outputs
