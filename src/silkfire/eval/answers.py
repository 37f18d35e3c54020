"""Batched greedy answers of a VLM to image questions (the evaluation and sampling workhorse)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


def blank_like(image: Any) -> Any:
    """A plain image of ``image``'s size and mode, filled with its most frequent colour (the background)."""
    from PIL import Image

    colors = image.getcolors(maxcolors=image.width * image.height)
    background = max(colors)[1] if colors else 0
    return Image.new(image.mode, image.size, background)


@contextmanager
def generation_mode(model: Any, processor: Any) -> Iterator[None]:
    """Left padding (every row's continuation starts right after its prompt) and eval mode; both restored after."""
    tokenizer = processor.tokenizer
    previous_side = tokenizer.padding_side
    was_training = model.training
    tokenizer.padding_side = "left"
    model.eval()
    try:
        yield
    finally:
        tokenizer.padding_side = previous_side
        model.train(was_training)


def generate_batch(model: Any, processor: Any, prompts: Sequence[str], images: Sequence[Any], *,
                   max_new_tokens: int, **generate_kwargs: Any) -> list[str]:
    """One batch of rendered prompts + PIL images -> the new text of each row, decoded without special tokens and
    stripped. Greedy unless ``generate_kwargs`` say otherwise; call it inside :func:`generation_mode`."""
    import torch

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    inputs = processor(text=list(prompts), images=list(images), return_tensors="pt", padding=True)
    inputs = {key: value.to(device=device, dtype=dtype) if key == "pixel_values" else value.to(device)
              for key, value in inputs.items()}
    options = {"do_sample": False, "num_beams": 1} | generate_kwargs
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens,
                                pad_token_id=processor.tokenizer.pad_token_id, **options)
    new_tokens = output[:, inputs["input_ids"].shape[1]:]
    return [text.strip() for text in processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def generate_answers(
    model: Any,
    processor: Any,
    records: Sequence[Mapping[str, Any]],
    image_root: Path,
    batch_size: int = 32,
    max_new_tokens: int = 16,
    progress: bool = True,
    blank_images: bool = False,
) -> list[str]:
    """Greedy answers to ``record["question"]`` about ``image_root / record["image"]``, in input order.

    Prompts are rendered with the processor's chat template (image block + question, assistant header) and
    left-padded, so every row's answer starts right after the prompt; answers are decoded without special
    tokens and stripped. Results do not depend on ``batch_size`` beyond float rounding.

    ``blank_images=True`` replaces every image by a blank one of the same size in its background colour (its
    most frequent colour): the answers of a *blind* model, the honest floor for measuring how much the model
    reads the image (a text-only prior scores the same with or without it).
    """
    from silkfire.train.data import load_image, prompt_text

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for index, record in enumerate(records):
        if not isinstance(record.get("image"), str):
            kind = type(record.get("image")).__name__
            raise ValueError(
                f"record {index} (question_id/id {record.get('question_id', record.get('id'))!r}): field 'image' is "
                f"{kind}, expected a path relative to the image root"
                + (" -- image bytes from a parquet row: read the file with silkfire.data.published, which extracts "
                   "them safely (silkfire eval / validate do)" if kind in ("dict", "bytes") else ""))
    answers: list[str] = []
    with generation_mode(model, processor):
        starts = range(0, len(records), batch_size)
        for start in tqdm(starts, desc="generate", unit="batch", disable=not progress):
            batch = records[start:start + batch_size]
            prompts = [prompt_text(processor, record["question"]) for record in batch]
            images = [load_image(image_root, record["image"]) for record in batch]
            if blank_images:
                images = [blank_like(image) for image in images]
            answers.extend(generate_batch(model, processor, prompts, images, max_new_tokens=max_new_tokens))
    return answers
