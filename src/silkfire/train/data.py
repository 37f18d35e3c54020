"""Encode instruction records once into tensors, and collate them into padded training batches.

Running the processor per batch costs more than the tiny model's forward pass, so texts are tokenised and
images turned into pixel tensors once, up front. Each example keeps its token ids, its labels (-100 everywhere
except the assistant's answer tokens and the closing </s>) and the index of its image in a shared pixel tensor.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

IGNORE_INDEX = -100


def user_message(question: str) -> dict[str, Any]:
    """The single user turn (image first, then the question) in block form, as processors expect."""
    return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}


def prompt_text(processor: Any, question: str) -> str:
    """The rendered prompt up to and including the assistant header (what generation continues from)."""
    return processor.apply_chat_template([user_message(question)], add_generation_prompt=True, tokenize=False)


def count_image_tokens(processor: Any, image: Image.Image) -> int:
    """How many placeholder tokens one image expands to (asked from the processor itself)."""
    encoded = processor(text=[processor.image_token], images=[image], return_tensors="pt")
    return int((encoded["input_ids"] == processor.image_token_id).sum())


def load_image(image_root: Path, relative: str) -> Image.Image:
    """The RGB image a record names, through the image path policy (silkfire.images): refused, with the reason,
    when it is outside `image_root`, not a regular file, not an image or over the pixel limit."""
    from silkfire.images import check_image

    return check_image(image_root, relative).load()


def encode_images(processor: Any, image_root: Path, relatives: Sequence[str], batch_size: int = 256,
                  progress: bool = True) -> torch.Tensor:
    """Pixel tensor [n, C, H, W] (float32) of the given images, in order."""
    chunks = []
    for start in tqdm(range(0, len(relatives), batch_size), desc="encode images", disable=not progress,
                      unit="batch"):
        images = [load_image(image_root, rel) for rel in relatives[start:start + batch_size]]
        chunks.append(processor.image_processor(images=images, return_tensors="pt")["pixel_values"].float())
    if not chunks:
        raise ValueError("no images to encode")
    return torch.cat(chunks)


@dataclass
class EncodedSFTData(torch.utils.data.Dataset):
    """Pre-encoded examples: per-example ids/labels plus one pixel tensor shared by examples of an image."""

    input_ids: list[torch.Tensor]
    labels: list[torch.Tensor]
    image_index: list[int]
    pixel_values: torch.Tensor

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "input_ids": self.input_ids[index],
            "labels": self.labels[index],
            "pixel_values": self.pixel_values[self.image_index[index]],
        }

    @property
    def num_answer_tokens(self) -> int:
        return sum(int((labels != IGNORE_INDEX).sum()) for labels in self.labels)


def conversation_pieces(processor: Any, turns: Sequence[tuple[str, str]]) -> list[tuple[str, bool]]:
    """The rendered conversation (image in the first user turn) cut into ``(text, is_answer)`` pieces.

    Each piece is what the processor's chat template adds for one prompt or one answer, so the pieces join
    to exactly the full rendering, whatever the template (tiny model, llava-hf/llava-1.5-*).
    """
    messages: list[dict[str, Any]] = []
    pieces: list[tuple[str, bool]] = []
    rendered = ""
    for index, (question, answer) in enumerate(turns):
        messages.append(user_message(question) if index == 0 else
                        {"role": "user", "content": [{"type": "text", "text": question}]})
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        full = processor.apply_chat_template(messages, tokenize=False)
        if not (prompt.startswith(rendered) and full.startswith(prompt)):
            raise ValueError(
                "the chat template does not render a conversation as prompt + answer pieces; "
                f"prompt={prompt!r} full={full!r}"
            )
        pieces.append((prompt[len(rendered):], False))
        pieces.append((full[len(prompt):], True))
        rendered = full
    return pieces


class _PieceRenderer:
    """:func:`conversation_pieces` with the template rendered once per conversation length.

    Rendering the Jinja template 2k times per k-turn sample dominated encoding (~18 s for the default world).
    The template is rendered once with sentinel texts; a conversation is then the sentinels replaced by its
    questions and answers. The shortcut is checked against a real rendering for each length and dropped
    (slow path) if the template changes the texts it is given (e.g. strips or escapes them).
    """

    def __init__(self, processor: Any):
        self.processor = processor
        self.skeletons: dict[int, list[tuple[str, bool]] | None] = {}

    @staticmethod
    def _sentinel(kind: str, index: int) -> str:
        return f"\x00{kind}{index}\x00"

    def __call__(self, turns: Sequence[tuple[str, str]]) -> list[tuple[str, bool]]:
        count = len(turns)
        if count not in self.skeletons:
            placeholders = [(self._sentinel("Q", i), self._sentinel("A", i)) for i in range(count)]
            skeleton = conversation_pieces(self.processor, placeholders)
            filled = self._fill(skeleton, turns)
            self.skeletons[count] = skeleton if filled == conversation_pieces(self.processor, turns) else None
        skeleton = self.skeletons[count]
        if skeleton is None:
            return conversation_pieces(self.processor, turns)
        return self._fill(skeleton, turns)

    def _fill(self, skeleton: list[tuple[str, bool]], turns: Sequence[tuple[str, str]]) -> list[tuple[str, bool]]:
        pieces = []
        for text, is_answer in skeleton:
            for index, (question, answer) in enumerate(turns):
                text = text.replace(self._sentinel("Q", index), question).replace(self._sentinel("A", index), answer)
            pieces.append((text, is_answer))
        return pieces


def record_turns(record: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """``(user, assistant, trained)`` turns of one record: its ``question``/``answer`` pair, or -- for a multi-turn
    sample such as a FIRE dialogue -- its ``turns`` (``[[user, assistant], ...]``, the image in the first user
    turn). An optional ``train_turns`` (one bool per turn) leaves the loss off the assistant turns marked false
    (they stay in the context); by default every assistant turn is trained."""
    if "turns" not in record:
        return [(record["question"], str(record["answer"]), True)]
    turns = record["turns"]
    flags = record.get("train_turns") or [True] * len(turns)
    if not turns or len(flags) != len(turns):
        raise ValueError(f"record {record.get('id', '?')}: 'turns' must be a non-empty list and 'train_turns' "
                         f"must have one flag per turn (got {len(turns)} turns, {len(flags)} flags)")
    return [(str(user), str(answer), bool(flag)) for (user, answer), flag in zip(turns, flags)]


def group_conversations(records: Sequence[Mapping[str, Any]], turns_per_sample: int,
                        seed: int) -> list[list[Mapping[str, Any]]]:
    """Records of one image grouped into conversations of at most ``turns_per_sample`` questions.

    With 1, every record is its own single-turn sample. With more, the image tokens are paid once for
    several questions. Questions of the same family and category (e.g. the Yes and the No question of an MME
    pair) are dealt into different conversations so no answer can be read off its sibling; the turn order is
    shuffled (seeded), except that a "describe" question comes last (its answer would give the others away).
    """
    if turns_per_sample < 1:
        raise ValueError(f"turns_per_sample must be >= 1, got {turns_per_sample}")
    if turns_per_sample == 1:
        return [[record] for record in records]
    rng = random.Random(seed)
    by_image: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        by_image.setdefault(record["image"], []).append(record)
    conversations: list[list[Mapping[str, Any]]] = []
    for image_records in by_image.values():
        groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
        for record in image_records:
            groups.setdefault((str(record.get("family")), str(record.get("category"))), []).append(record)
        count = -(-len(image_records) // turns_per_sample)
        dealt: list[list[Mapping[str, Any]]] = [[] for _ in range(count)]
        for key in sorted(groups):
            group = list(groups[key])
            rng.shuffle(group)  # files list a pair's Yes before its No: never let that order leak
            # the emptiest conversations first (ties broken at random): sizes stay <= turns_per_sample
            order = sorted(range(count), key=lambda c: (len(dealt[c]), rng.random()))
            for index, record in enumerate(group):
                dealt[order[index % count]].append(record)
        for conversation in dealt:
            rng.shuffle(conversation)
            # A description answers every other question about the image: placed earlier it would let later
            # answers be copied from the context instead of read from the image, so it always comes last.
            conversation.sort(key=lambda record: record.get("category") == "describe")
        conversations.extend(dealt)
    return conversations


def encode_sft_records(records: Sequence[Mapping[str, Any]], processor: Any, image_root: Path,
                       progress: bool = True, turns_per_sample: int = 1, seed: int = 0) -> EncodedSFTData:
    """Tokenise question/answer records and their images once.

    A sample is ``<s>`` + the rendered conversation with the image placeholder expanded (9 tokens for the
    tiny model); labels copy the answer pieces (each answer and its ``</s>``) and are -100 on everything
    else: prompt text, image tokens, and (later, in the collator) padding. ``turns_per_sample`` > 1 packs
    several questions about one image into a multi-turn conversation (see :func:`group_conversations`).
    """
    if not records:
        raise ValueError("no records to encode")
    tokenizer = processor.tokenizer
    conversations = group_conversations(records, turns_per_sample, seed)
    image_ids: dict[str, int] = {}
    for conversation in conversations:
        image_ids.setdefault(conversation[0]["image"], len(image_ids))
    relatives = list(image_ids)
    pixel_values = encode_images(processor, image_root, relatives, progress=progress)
    num_image_tokens = count_image_tokens(processor, load_image(image_root, relatives[0]))
    image_token_id = processor.image_token_id
    eos_id = tokenizer.eos_token_id

    renderer = _PieceRenderer(processor)
    turn_lists = [[turn for record in conversation for turn in record_turns(record)] for conversation in conversations]
    all_pieces = [renderer([(user, answer) for user, answer, _ in turns])
                  for turns in tqdm(turn_lists, desc="encode texts", disable=not progress, unit="sample")]
    flat = [text for pieces in all_pieces for text, _ in pieces]
    # Only the very first piece of a sample gets the tokenizer's special prefix (<s>).
    firsts = tokenizer([pieces[0][0] for pieces in all_pieces], add_special_tokens=True)["input_ids"]
    rest = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    all_ids, all_labels = [], []
    cursor = 0
    for sample, pieces in enumerate(all_pieces):
        ids: list[int] = []
        labels: list[int] = []
        trained = iter([flag for _, _, flag in turn_lists[sample]])  # one flag per answer piece, in order
        for position, (_, is_answer) in enumerate(pieces):
            tokens = list(firsts[sample] if position == 0 else rest[cursor])
            cursor += 1
            if is_answer:
                if not tokens or tokens[-1] != eos_id:
                    tokens.append(eos_id)  # the model must learn to stop
                ids.extend(tokens)
                labels.extend(tokens if next(trained) else [IGNORE_INDEX] * len(tokens))
            else:
                expanded: list[int] = []
                for token in tokens:
                    expanded.extend([token] * num_image_tokens if token == image_token_id else [token])
                ids.extend(expanded)
                labels.extend([IGNORE_INDEX] * len(expanded))
        all_ids.append(torch.tensor(ids, dtype=torch.long))
        all_labels.append(torch.tensor(labels, dtype=torch.long))
    image_index = [image_ids[conversation[0]["image"]] for conversation in conversations]
    return EncodedSFTData(all_ids, all_labels, image_index, pixel_values)


class SFTCollator:
    """Right-pads ids (pad id), labels (-100), builds the attention mask and stacks the pixel tensors."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        batch = len(features)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, :n] = feature["input_ids"]
            labels[row, :n] = feature["labels"]
            attention_mask[row, :n] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "pixel_values": torch.stack([f["pixel_values"] for f in features]),
        }


def styled_answers(records: Sequence[Mapping[str, Any]], style: str) -> list[Mapping[str, Any]]:
    """Records with their training target in ``style``: ``plain`` keeps ``answer``; ``explained`` writes
    ``"<answer>, <rationale>."`` for records that carry a ``rationale`` (the world's yes/no questions) -- the
    answer still opens the reply, so MME's parser reads it as before."""
    from silkfire.train.sft import ANSWER_STYLES
    from silkfire.world.templates import explained

    if style not in ANSWER_STYLES:
        raise ValueError(f"answer style must be one of {ANSWER_STYLES}, got {style!r}")
    if style == "plain":
        return list(records)

    return [dict(record, answer=explained(str(record["answer"]), str(record["rationale"])))
            if record.get("rationale") else record for record in records]


def select_records(records: Sequence[Mapping[str, Any]], families: Sequence[str] | None,
                   max_samples: int | None, seed: int | str,
                   family_weights: Mapping[str, float] | None = None) -> list[Mapping[str, Any]]:
    """Keep the listed families, then cap at ``max_samples`` with a seeded shuffle (order then fixed).

    ``family_weights`` (optional, used only when ``max_samples`` caps the data) sets the share of each family
    in the sample (a family without a weight is left out; a family smaller than its share gives all it has).
    """
    kept = [r for r in records if families is None or r.get("family") in families]
    if not kept:
        raise ValueError(f"no records left after keeping families {list(families or [])}")
    rng = random.Random(seed)
    if max_samples is None or max_samples >= len(kept):
        kept = list(kept)
        rng.shuffle(kept)
        return kept
    if not family_weights:
        return rng.sample(kept, max_samples)
    by_family: dict[str, list[Mapping[str, Any]]] = {}
    for record in kept:
        by_family.setdefault(record.get("family", ""), []).append(record)
    total = sum(family_weights.get(f, 0.0) for f in by_family)
    if total <= 0:
        raise ValueError(f"family_weights {dict(family_weights)} give no weight to the families {sorted(by_family)}")
    chosen: list[Mapping[str, Any]] = []
    for family in sorted(by_family):
        want = round(max_samples * family_weights.get(family, 0.0) / total)
        pool = by_family[family]
        chosen.extend(rng.sample(pool, min(want, len(pool))))
    rng.shuffle(chosen)
    return chosen
