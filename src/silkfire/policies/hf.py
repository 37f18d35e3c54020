"""A local Hugging Face VLM folder as a policy: batched sampling with temperature (or greedy at 0)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from silkfire.policies.base import Instruction

BLANK_RETRIES = 2  # re-draws for a response that decodes to nothing visible
# Fan-out on a thread runner runs policies in several threads of one process. torch.manual_seed seeds one
# process-wide generator, so threads take turns from seeding to the end of a batch's generation (each batch stays
# reproducible); transformers' loading is not thread-safe either (two loads at once failed with "Cannot copy out
# of meta tensor"), so loads take turns too.
_SEEDED_GENERATION = threading.Lock()
_LOADING = threading.Lock()


def _seed_of(*parts: object) -> int:
    """A stable 63-bit seed from any parts (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "big") >> 1


class HFPolicy:
    """Loads the model on first use and frees it after each ``respond`` (pools hold several checkpoints)."""

    def __init__(self, name: str, source: str | Path, *, temperature: float = 0.7, top_p: float = 1.0,
                 max_new_tokens: int = 48, batch_size: int = 32, dtype: str = "auto", device: str = "auto",
                 progress: bool = True):
        if temperature < 0:
            raise ValueError(f"policy {name!r}: temperature must be >= 0, got {temperature}")
        self.name = name
        self.source = source
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.dtype = dtype
        self.device = device
        self.progress = progress

    def describe(self) -> dict[str, Any]:
        return {"kind": "hf", "source": str(self.source), "temperature": self.temperature, "top_p": self.top_p,
                "max_new_tokens": self.max_new_tokens}

    def respond(self, instructions: Sequence[Instruction], image_root: Path, seed: int) -> list[str]:
        import gc

        from silkfire.models.loading import load_vlm

        if not instructions:
            return []
        from silkfire.runtime import oom_hint

        with _LOADING:
            model, processor = load_vlm(self.source, dtype=self.dtype, device=self.device)
        knobs = {"silkie.sample.batch_size (or this pool entry's batch_size)": self.batch_size}
        try:
            with oom_hint(f"policy {self.name}", knobs):
                answers = sample_answers(
                    model, processor, instructions, image_root, seed=_seed_of(seed, self.name),
                    temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                    batch_size=self.batch_size, progress=self.progress, desc=f"sample {self.name}",
                )
        finally:
            del model, processor
            gc.collect()
        return answers


def sample_answers(model: Any, processor: Any, instructions: Sequence[Instruction], image_root: Path, *,
                   seed: int, temperature: float, top_p: float = 1.0, max_new_tokens: int = 48,
                   batch_size: int = 32, progress: bool = True, desc: str = "sample") -> list[str]:
    """Sampled answers (greedy when temperature is 0), left-padded batches as in eval.answers.

    Each batch is seeded from ``seed`` and its first instruction id, so an answer does not depend on which
    other policies ran before. Special tokens (pad, image, bos) are banned from the answer; a response that
    still decodes to blank is drawn again up to BLANK_RETRIES times (the VLFeedback gate refuses blanks).
    """
    import torch

    from silkfire.eval.answers import generate_batch, generation_mode
    from silkfire.train.data import load_image, prompt_text

    tokenizer = processor.tokenizer
    banned = sorted({i for i in (tokenizer.pad_token_id, tokenizer.bos_token_id,
                                 getattr(processor, "image_token_id", None)) if i is not None})
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 \
        else {"do_sample": False}
    answers: list[str] = []
    with generation_mode(model, processor):
        for start in tqdm(range(0, len(instructions), batch_size), desc=desc, unit="batch", disable=not progress):
            batch = list(instructions[start:start + batch_size])
            texts = [""] * len(batch)
            todo = list(range(len(batch)))
            for attempt in range(BLANK_RETRIES + 1):
                rows = [batch[i] for i in todo]
                prompts = [prompt_text(processor, r.prompt) for r in rows]
                images = [load_image(image_root, r.image) for r in rows]
                with _SEEDED_GENERATION:
                    torch.manual_seed(_seed_of(seed, batch[0].id, attempt))
                    decoded = generate_batch(model, processor, prompts, images, max_new_tokens=max_new_tokens,
                                             bad_words_ids=[[i] for i in banned] or None, **sampling)
                for index, text in zip(todo, decoded):
                    texts[index] = text
                todo = [i for i in todo if not texts[i]]
                if not todo or temperature == 0:
                    break
            answers.extend(texts)
    return answers
