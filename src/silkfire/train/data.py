"""Encode instruction records once into tensors, and collate them into padded training batches.

Running the tokenizer per batch costs more than the tiny model's forward pass, so texts are tokenised once, up
front. Each example keeps its token ids, its labels (-100 everywhere except the assistant's answer tokens and the
token that ends its turn) and the index of its image in a shared store of per-image model inputs. Training reads
:func:`encode_sft_to_disk`'s data -- token rows memory-mapped from disk, images processed when read (cached) -- so
memory stays flat in data size; :func:`encode_sft_records` builds the same items in memory.

Every family goes through the same code, driven by what its processor produces: prompts are rendered by the
processor's chat template; images by its image processor at its resolution -- one [C, H, W] tensor per image
(LLaVA-1.5), a stack of anyres tiles plus ``image_sizes`` (LLaVA-NeXT), or flattened patches plus
``image_grid_thw`` (Qwen2-VL); the number of image tokens is asked from the processor per image size.
"""

from __future__ import annotations

import itertools
import random
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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


def image_inputs(processor: Any, images: Sequence[Image.Image]) -> list[dict[str, torch.Tensor]]:
    """The model inputs of each image from the processor's image processor, one dict per image: ``pixel_values``
    ([C, H, W]; LLaVA-NeXT: [tiles, C, H, W]; Qwen2-VL: [patches, dim]) and the family's per-image extras
    (``image_sizes`` [2], ``image_grid_thw`` [3]). Floats are float32."""
    if not images:
        return []
    output = processor.image_processor(images=list(images), return_tensors="pt")
    keys = set(output.keys())
    if keys == {"pixel_values"}:  # one fixed-size tensor per image (LLaVA-1.5)
        return [{"pixel_values": row.float()} for row in output["pixel_values"]]
    if "image_grid_thw" in keys:  # Qwen2-VL: every image's patches concatenated, its grid says how many
        grids = output["image_grid_thw"]
        chunks = output["pixel_values"].float().split(grids.prod(-1).tolist())
        return [{"pixel_values": chunk, "image_grid_thw": grid} for chunk, grid in zip(chunks, grids)]
    # anyres (LLaVA-NeXT): a batch pads every image to the most tiles; one image at a time keeps its own count
    per_image = []
    for image in images:
        single = output if len(images) == 1 else processor.image_processor(images=[image], return_tensors="pt")
        per_image.append({key: (value[0].float() if value.is_floating_point() else value[0])
                          for key, value in single.items()})
    return per_image


def stack_images(items: Sequence[Mapping[str, torch.Tensor]]) -> tuple[torch.Tensor | list[torch.Tensor],
                                                                        dict[str, torch.Tensor]]:
    """Per-image inputs stored once: ``pixel_values`` stacked into one tensor when every image has the same shape
    (else kept as a list), extras (``image_sizes``, ``image_grid_thw``) stacked per image."""
    pixels = [item["pixel_values"] for item in items]
    stacked: torch.Tensor | list[torch.Tensor] = (torch.stack(pixels) if len({p.shape for p in pixels}) == 1
                                                  else pixels)
    extras = {key: torch.stack([item[key] for item in items]) for key in items[0] if key != "pixel_values"}
    return stacked, extras


def collate_images(items: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A batch of per-image inputs as the model takes them: Qwen2-VL's patches concatenated (with their grids),
    otherwise stacked, anyres tiles zero-padded to the most tiles in the batch (the model reads ``image_sizes``)."""
    if "image_grid_thw" in items[0]:
        batch = {"pixel_values": torch.cat([item["pixel_values"] for item in items])}
    else:
        pixels = [item["pixel_values"] for item in items]
        most = max(p.shape[0] for p in pixels)
        if len({p.shape for p in pixels}) > 1:
            pixels = [torch.cat([p, p.new_zeros((most - p.shape[0], *p.shape[1:]))]) for p in pixels]
        batch = {"pixel_values": torch.stack(pixels)}
    for key in items[0]:
        if key != "pixel_values":
            batch[key] = torch.stack([item[key] for item in items])
    return batch


def mm_token_type_ids(input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """1 where an image token stands, 0 elsewhere: what Qwen2-VL's M-RoPE needs next to ``image_grid_thw``."""
    return (input_ids == image_token_id).long()


def encode_images(processor: Any, image_root: Path, relatives: Sequence[str], batch_size: int = 256,
                  progress: bool = True) -> tuple[torch.Tensor | list[torch.Tensor], dict[str, torch.Tensor]]:
    """Per-image model inputs of the given images, in order (see :func:`image_inputs`, :func:`stack_images`):
    ``pixel_values`` ([n, C, H, W] for same-size inputs) and the extras of the family (``{}`` for LLaVA-1.5)."""
    items: list[dict[str, torch.Tensor]] = []
    for start in tqdm(range(0, len(relatives), batch_size), desc="encode images", disable=not progress,
                      unit="batch"):
        images = [load_image(image_root, rel) for rel in relatives[start:start + batch_size]]
        items.extend(image_inputs(processor, images))
    if not items:
        raise ValueError("no images to encode")
    return stack_images(items)


@dataclass
class EncodedSFTData(torch.utils.data.Dataset):
    """Pre-encoded examples: per-example ids/labels plus the inputs of each image, shared by examples of an image.

    ``pixel_values`` is one tensor [n_images, ...] when every image's input has the same shape, else a list;
    ``image_extras`` holds the family's per-image tensors (``image_sizes``, ``image_grid_thw``), stacked."""

    input_ids: list[torch.Tensor]
    labels: list[torch.Tensor]
    image_index: list[int]
    pixel_values: torch.Tensor | list[torch.Tensor]
    image_extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.image_index[index]
        return {
            "input_ids": self.input_ids[index],
            "labels": self.labels[index],
            "pixel_values": self.pixel_values[image],
            **{key: value[image] for key, value in self.image_extras.items()},
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


def end_markers(tokenizer: Any) -> list[str]:
    """Texts that close an assistant turn when a chat template writes them after the answer: the tokenizer's eos and
    its other special tokens (<|im_end|>, <|eot_id|>, ...), never pad or the image placeholder."""
    skip = {tokenizer.pad_token, getattr(tokenizer, "image_token", None), getattr(tokenizer, "bos_token", None)}
    specials = [tokenizer.eos_token, *getattr(tokenizer, "all_special_tokens", [])]
    return [token for token in dict.fromkeys(specials) if token and token not in skip]


def split_answer(piece: str, answer: str, markers: Sequence[str]) -> tuple[str, bool, str]:
    """An answer piece of a rendered conversation cut into ``(trained text, append eos, untrained rest)``.

    The trained text runs from the piece's start through the answer and the first end-of-turn marker the template
    writes after it (tiny model ``" Yes</s>"``, Qwen2-VL ``"Yes<|im_end|>"``, Llama-3 ``"\nYes<|eot_id|>"``); what
    follows (ChatML's newline) is context, not target. A template that writes no marker (llava-hf: ``"Yes "``, a
    separator space) gets the tokenizer's eos appended right after the answer -- the model must learn to stop --
    and its trailing whitespace becomes context (never the target ``▁Yes ▁ </s>``)."""
    found = piece.find(answer) if answer else -1
    after = found + len(answer) if found >= 0 else 0
    hits = [(index, marker) for marker in markers if (index := piece.find(marker, after)) >= 0]
    if hits:
        index, marker = min(hits)
        cut = index + len(marker)
        return piece[:cut], False, piece[cut:]
    body = piece[:after] if found >= 0 and not piece[after:].strip() else piece.rstrip()
    return body, True, piece[len(body):]


def _trained_pieces(pieces: Sequence[tuple[str, bool]], answers: Sequence[str],
                    markers: Sequence[str]) -> list[tuple[str, bool, bool]]:
    """``(text, is_answer, append_eos)`` with each answer cut by :func:`split_answer`; an answer's untrained rest
    opens the next prompt piece (the last one's trailing rest, whitespace after the final turn, is dropped)."""
    out: list[tuple[str, bool, bool]] = []
    carry = ""
    answer_iter = iter(answers)
    for text, is_answer in pieces:
        if not is_answer:
            out.append((carry + text, False, False))
            carry = ""
            continue
        trained, add_eos, rest = split_answer(text, next(answer_iter), markers)
        out.append((trained, True, add_eos))
        carry = rest
    if carry.strip():  # non-blank template text after the last answer stays in the sequence, untrained
        out.append((carry, False, False))
    return out


class _ImageTokens:
    """Image tokens of each image, asked from the processor once per distinct image size (every family's count is a
    function of the size) -- once in all for fixed-size inputs (LLaVA-1.5: no per-image extras). Every image's header
    is checked by the image policy here, so a refused image stops encoding, not training."""

    def __init__(self, processor: Any, image_root: Path):
        self.processor, self.image_root = processor, Path(image_root)
        self.by_size: dict[tuple[int, int] | None, int] = {}
        self.fixed: bool | None = None

    def __call__(self, relative: str) -> int:
        from silkfire.images import check_image

        checked = check_image(self.image_root, relative)
        if self.fixed is None:  # the first image says whether the family's inputs are fixed-size
            self.fixed = set(image_inputs(self.processor, [checked.load()])[0]) == {"pixel_values"}
        key = None if self.fixed else (checked.width, checked.height)
        if key not in self.by_size:
            self.by_size[key] = count_image_tokens(self.processor, checked.load())
        return self.by_size[key]


class _SampleEncoder:
    """Token ids and labels of conversations, a chunk at a time (what both the in-memory and the on-disk encoding
    run), and the index of each sample's image in order of first use."""

    def __init__(self, processor: Any, image_root: Path):
        tokenizer = processor.tokenizer
        self.tokenizer, self.image_token_id, self.eos_id = tokenizer, processor.image_token_id, tokenizer.eos_token_id
        self.markers = end_markers(tokenizer)
        self.renderer = _PieceRenderer(processor)
        self.image_tokens = _ImageTokens(processor, image_root)
        self.image_ids: dict[str, int] = {}
        self.tokens_per_image: list[int] = []

    def image(self, relative: str) -> int:
        if relative not in self.image_ids:
            self.tokens_per_image.append(self.image_tokens(relative))
            self.image_ids[relative] = len(self.image_ids)
        return self.image_ids[relative]

    def encode(self, conversations: Sequence[Sequence[Mapping[str, Any]]]
               ) -> tuple[list[list[int]], list[list[int]], list[int]]:
        """``(ids, labels, image index)`` of each conversation (see :func:`encode_sft_records`)."""
        image_index = [self.image(conversation[0]["image"]) for conversation in conversations]
        turn_lists = [[turn for record in conversation for turn in record_turns(record)]
                      for conversation in conversations]
        all_pieces = [_trained_pieces(self.renderer([(user, answer) for user, answer, _ in turns]),
                                      [answer for _, answer, _ in turns], self.markers) for turns in turn_lists]
        flat = [text for pieces in all_pieces for text, _, _ in pieces[1:]]
        # Only the very first piece of a sample gets the tokenizer's special prefix (<s>).
        firsts = self.tokenizer([pieces[0][0] for pieces in all_pieces], add_special_tokens=True)["input_ids"]
        rest = iter(self.tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else [])
        all_ids, all_labels = [], []
        for sample, pieces in enumerate(all_pieces):
            ids: list[int] = []
            labels: list[int] = []
            num_image_tokens = self.tokens_per_image[image_index[sample]]
            trained = iter([flag for _, _, flag in turn_lists[sample]])  # one flag per answer piece, in order
            for position, (_, is_answer, add_eos) in enumerate(pieces):
                tokens = list(firsts[sample]) if position == 0 else list(next(rest))
                if is_answer:
                    if add_eos:
                        tokens.append(self.eos_id)  # the model must learn to stop
                    ids.extend(tokens)
                    labels.extend(tokens if next(trained) else [IGNORE_INDEX] * len(tokens))
                else:
                    expanded: list[int] = []
                    for token in tokens:
                        expanded.extend([token] * num_image_tokens if token == self.image_token_id else [token])
                    ids.extend(expanded)
                    labels.extend([IGNORE_INDEX] * len(expanded))
            all_ids.append(ids)
            all_labels.append(labels)
        return all_ids, all_labels, image_index


def encode_sft_records(records: Sequence[Mapping[str, Any]], processor: Any, image_root: Path,
                       progress: bool = True, turns_per_sample: int = 1, seed: int = 0) -> EncodedSFTData:
    """Tokenise question/answer records and their images once, in memory (training reads
    :func:`encode_sft_to_disk`'s data, which is the same element for element and flat in memory).

    A sample is the tokenizer's prefix (``<s>``; none for Qwen2) + the conversation rendered by the processor's chat
    template, each image placeholder expanded to that image's token count (9 for the tiny model, 576 for
    LLaVA-1.5 at 336 px, per image for anyres / dynamic resolution); labels copy the answers and the token that ends
    each (:func:`split_answer`) and are -100 on everything else: prompt text, image tokens, template separators
    and (later, in the collator) padding. ``turns_per_sample`` > 1 packs several questions about one image into a
    multi-turn conversation (see :func:`group_conversations`).
    """
    if not records:
        raise ValueError("no records to encode")
    encoder = _SampleEncoder(processor, image_root)
    conversations = group_conversations(records, turns_per_sample, seed)
    all_ids, all_labels, image_index = encoder.encode(conversations)
    pixel_values, extras = encode_images(processor, image_root, list(encoder.image_ids), progress=progress)
    return EncodedSFTData([torch.tensor(ids, dtype=torch.long) for ids in all_ids],
                          [torch.tensor(labels, dtype=torch.long) for labels in all_labels],
                          image_index, pixel_values, extras)


# ---- encoding flat in memory: token rows on disk, images processed when read -------------------------------------
IMAGE_CACHE_BYTES = 256 << 20  # processed image inputs kept in memory: all of a default world's (~55 MB), few at 336 px
ENCODE_CHUNK = 2048  # samples tokenised and written at a time: encoding's working set, whatever the data size


class ImageStore:
    """The model inputs of each image (:func:`image_inputs`), made when first read and kept in a bytes-bounded LRU
    cache.

    Processed pixels are not stored: at VLFeedback's scale (80k images at 336 px, ~1.35 MB of float32 each) they
    would be a ~108 GB file, written once and read at random, many times the size of the compressed images -- so, as
    Hugging Face pipelines do, an image is processed when an item needs it. The cache keeps a small world's images
    processed once (many samples share an image) and serves DPO's chosen and rejected rows, which share theirs."""

    def __init__(self, processor: Any, image_root: Path, relatives: Sequence[str],
                 cache_bytes: int = IMAGE_CACHE_BYTES):
        self.processor, self.image_root, self.relatives = processor, Path(image_root), list(relatives)
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()
        self._cached = 0

    def __len__(self) -> int:
        return len(self.relatives)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        inputs = image_inputs(self.processor, [load_image(self.image_root, self.relatives[index])])[0]
        self._cache[index] = inputs
        self._cached += _nbytes(inputs)
        while self._cached > self.cache_bytes and len(self._cache) > 1:
            self._cached -= _nbytes(self._cache.popitem(last=False)[1])
        return inputs

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The image inputs of the images at ``indices``, batched as the model takes them (:func:`collate_images`)."""
        return collate_images([self[index] for index in indices])

    def digest(self) -> str:
        """Digest of what the inputs are made from: the image files' bytes and the image processor's settings."""
        import hashlib

        from silkfire.images import check_image
        from silkfire.io import file_digest

        digest = hashlib.sha256(self.processor.image_processor.to_json_string().encode())
        for relative in self.relatives:
            digest.update(f"{relative}\0{file_digest(check_image(self.image_root, relative).path)}\0".encode())
        return digest.hexdigest()[:20]


def _nbytes(inputs: Mapping[str, torch.Tensor]) -> int:
    return sum(value.numel() * value.element_size() for value in inputs.values())


class TokenRows(Sequence[torch.Tensor]):
    """Variable-length int32 rows of one flat memory-mapped array, read as int64 tensors; ``order[i]`` is the row
    at position i (None: the rows' own order)."""

    def __init__(self, values: np.ndarray, offsets: np.ndarray, order: np.ndarray | None):
        self.values, self.offsets, self.order = values, offsets, order

    def __len__(self) -> int:
        return len(self.offsets) - 1 if self.order is None else len(self.order)

    def __getitem__(self, index: int) -> torch.Tensor:  # type: ignore[override]
        row = int(index if self.order is None else self.order[index])
        return torch.from_numpy(self.values[self.offsets[row]:self.offsets[row + 1]].astype(np.int64))


class DiskSFTData(torch.utils.data.Dataset):
    """Encoded samples read from disk: items equal :class:`EncodedSFTData`'s for the same records, element for
    element, while memory holds a few bytes per sample (length, image index), the image paths and the image cache.

    ``folder`` holds ``ids.i32`` / ``labels.i32`` (every sample's tokens, concatenated), ``offsets.i64`` and
    ``image.i32``; ``order`` maps dataset positions to stored rows (a selection streamed in file order)."""

    def __init__(self, folder: Path, images: ImageStore, order: np.ndarray | None = None,
                 owner: tempfile.TemporaryDirectory | None = None):
        self.folder, self.images, self._owner = Path(folder), images, owner
        offsets = np.memmap(self.folder / "offsets.i64", dtype=np.int64, mode="r")
        self.input_ids = TokenRows(np.memmap(self.folder / "ids.i32", dtype=np.int32, mode="r"), offsets, order)
        self.labels = TokenRows(np.memmap(self.folder / "labels.i32", dtype=np.int32, mode="r"), offsets, order)
        stored_images = np.fromfile(self.folder / "image.i32", dtype=np.int32)
        self.image_index = stored_images if order is None else stored_images[order]
        self.lengths = np.diff(offsets) if order is None else np.diff(offsets)[order]

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"input_ids": self.input_ids[index], "labels": self.labels[index],
                **self.images[int(self.image_index[index])]}

    def digest(self) -> str:
        """Digest of the samples in dataset order (ids, labels, image of each) and of the images' sources."""
        import hashlib

        digest = hashlib.sha256(self.lengths.astype(np.int64).tobytes())
        for start in range(0, len(self), ENCODE_CHUNK):
            positions = range(start, min(start + ENCODE_CHUNK, len(self)))
            for rows in (self.input_ids, self.labels):
                digest.update(np.concatenate([rows[i].numpy() for i in positions]).tobytes())
        digest.update(self.image_index.astype(np.int64).tobytes())
        digest.update(self.images.digest().encode())
        return digest.hexdigest()[:20]

    def close(self) -> None:
        """Remove the encoded files now when they live in a temporary folder of their own (else at exit)."""
        if self._owner is not None:
            self._owner.cleanup()


class _RowWriter:
    """Appends encoded chunks to the files :class:`DiskSFTData` reads."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.files = {name: (folder / name).open("wb") for name in ("ids.i32", "labels.i32", "offsets.i64",
                                                                     "image.i32")}
        self.end = 0
        np.zeros(1, dtype=np.int64).tofile(self.files["offsets.i64"])

    def write(self, ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], image_index: Sequence[int]) -> None:
        lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
        np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32).tofile(self.files["ids.i32"])
        np.fromiter(itertools.chain.from_iterable(labels), dtype=np.int32).tofile(self.files["labels.i32"])
        (self.end + np.cumsum(lengths)).tofile(self.files["offsets.i64"])
        np.asarray(image_index, dtype=np.int32).tofile(self.files["image.i32"])
        self.end += int(lengths.sum())

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()


def encode_sft_to_disk(records: Iterable[Mapping[str, Any]] | RecordSelection, processor: Any, image_root: Path, *,
                       progress: bool = True, turns_per_sample: int = 1, seed: int = 0,
                       cache_dir: Path | None = None) -> DiskSFTData:
    """:func:`encode_sft_records` with memory flat in data size: samples are tokenised :data:`ENCODE_CHUNK` at a
    time into int32 files under ``cache_dir`` and read back memory-mapped; images are processed when an item is read
    (:class:`ImageStore`). A :class:`RecordSelection` is streamed from its file (with ``turns_per_sample`` > 1 its
    records are read into memory first: a conversation gathers an image's questions from the whole file).

    Without ``cache_dir`` the files go to a temporary folder (``$TMPDIR``) that :meth:`DiskSFTData.close` -- or the
    end of the process -- removes: never into a stage's output folder, which DVC tracks as a whole."""
    owner = None
    if cache_dir is None:
        owner = tempfile.TemporaryDirectory(prefix="silkfire-encoded-")
        cache_dir = Path(owner.name)
    order = None
    if isinstance(records, RecordSelection) and turns_per_sample == 1:
        conversations: Iterable[Sequence[Mapping[str, Any]]] = ([record] for record in records.in_file_order())
        order, total = records.file_order_rows(), len(records)
    else:
        conversations = group_conversations(list(records), turns_per_sample, seed)
        total = len(conversations)
    if not total:
        raise ValueError("no records to encode")
    encoder = _SampleEncoder(processor, image_root)
    writer = _RowWriter(Path(cache_dir))
    with tqdm(total=total, desc="encode samples", disable=not progress, unit="sample") as bar:
        for chunk in _chunks(conversations, ENCODE_CHUNK):
            writer.write(*encoder.encode(chunk))
            bar.update(len(chunk))
    writer.close()
    images = ImageStore(processor, image_root, list(encoder.image_ids))
    return DiskSFTData(Path(cache_dir), images, order, owner)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class PlannedOrder(torch.utils.data.Dataset):
    """``data`` read in a fixed order planned up front (``order``: indices into ``data``, repeats allowed). Trainer
    reads it with a sequential sampler, so the whole run's sample order -- a curriculum included -- is one seeded
    list, and a resumed run skips exactly the batches it already trained on."""

    def __init__(self, data: torch.utils.data.Dataset, order: Sequence[int]) -> None:
        self.data, self.order = data, list(order)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> Any:
        return self.data[self.order[index]]


def length_grouped(order: Sequence[int], lengths: Sequence[int], batch_size: int, generator: torch.Generator
                   ) -> list[int]:
    """``order`` cut into mega-batches of 32 batches, each sorted by length (stable), then the batches shuffled
    with ``generator``: a batch holds similar lengths (little padding), the batches' order stays random."""
    mega = 32 * batch_size
    grouped = [i for start in range(0, len(order), mega)
               for i in sorted(order[start:start + mega], key=lambda index: lengths[index])]
    batches = [grouped[start:start + batch_size] for start in range(0, len(grouped), batch_size)]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [i for b in shuffled for i in batches[b]]


def length_grouped_passes(lengths: Sequence[int], batch_size: int, total_samples: int, seed: int) -> list[int]:
    """A run's sample order as seeded passes over every sample (pass e: a permutation seeded by (seed, e), as a
    random sampler would draw it), each pass :func:`length_grouped`; cut at ``total_samples``."""
    out: list[int] = []
    epoch = 0
    while len(out) < total_samples:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(lengths), generator=generator).tolist()
        out.extend(length_grouped(order, lengths, batch_size, generator))
        epoch += 1
    return out[:total_samples]


def curriculum_order(sample_families: Sequence[set[str]], families: Sequence[str], curriculum_samples: int,
                     total_samples: int, seed: int) -> list[int]:
    """The sample order of a run that starts with a curriculum: ``curriculum_samples`` samples drawn from the ones
    whose questions all belong to ``families`` (seeded passes over them, reshuffled each pass), then seeded
    reshuffled passes over every sample until ``total_samples``. ``sample_families[i]``: the families of sample
    i's questions."""
    wanted = set(families)
    pool = [i for i, found in enumerate(sample_families) if found and found <= wanted]
    if not pool:
        raise ValueError(f"train.curriculum_families {sorted(wanted)}: no training sample has only these families "
                         f"(with turns_per_sample > 1 a sample mixes the families of one image; use 1)")
    rng = random.Random(f"curriculum-{seed}")

    def passes(indices: list[int], count: int) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            shuffled = list(indices)
            rng.shuffle(shuffled)
            out.extend(shuffled)
        return out[:count]

    head = passes(pool, min(curriculum_samples, total_samples))
    return head + passes(list(range(len(sample_families))), total_samples - len(head))


def pad_rows(ids: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], pad_token_id: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids with ``pad_token_id``, labels with -100, attention mask) of variable-length rows."""
    length = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), length), pad_token_id, dtype=torch.long)
    label_ids = torch.full((len(ids), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(ids), length), dtype=torch.long)
    for row, (tokens, targets) in enumerate(zip(ids, labels)):
        input_ids[row, :len(tokens)] = tokens
        label_ids[row, :len(targets)] = targets
        mask[row, :len(tokens)] = 1
    return input_ids, label_ids, mask


class SFTCollator:
    """Right-pads ids (pad id), labels (-100), builds the attention mask and batches the image inputs
    (:func:`collate_images`); with ``image_token_id`` and Qwen2-VL inputs also ``mm_token_type_ids``."""

    def __init__(self, pad_token_id: int, image_token_id: int | None = None):
        self.pad_token_id = pad_token_id
        self.image_token_id = image_token_id

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids, labels, attention_mask = pad_rows([f["input_ids"] for f in features],
                                                     [f["labels"] for f in features], self.pad_token_id)
        images = collate_images([{key: value for key, value in f.items() if key not in ("input_ids", "labels")}
                                 for f in features])
        out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, **images}
        if "image_grid_thw" in images and self.image_token_id is not None:
            out["mm_token_type_ids"] = mm_token_type_ids(input_ids, self.image_token_id)
        return out


def styled_answers(records: Sequence[Mapping[str, Any]], style: str) -> list[Mapping[str, Any]]:
    """Records with their training target in ``style``: ``plain`` keeps ``answer``; ``explained`` writes
    ``"<answer>, <rationale>."`` for records that carry a ``rationale`` (the world's yes/no questions) -- the
    answer still opens the reply, so MME's parser reads it as before."""
    _check_style(style)
    return [styled_answer(record, style) for record in records]


def _check_style(style: str) -> None:
    from silkfire.world.templates import ANSWER_STYLES

    if style not in ANSWER_STYLES:
        raise ValueError(f"answer style must be one of {ANSWER_STYLES}, got {style!r}")


def styled_answer(record: Mapping[str, Any], style: str) -> Mapping[str, Any]:
    """One record of :func:`styled_answers` (``style`` already checked)."""
    from silkfire.world.templates import explained

    if style == "plain" or not record.get("rationale"):
        return record
    return dict(record, answer=explained(str(record["answer"]), str(record["rationale"])))


def select_records(records: Sequence[Mapping[str, Any]], families: Sequence[str] | None,
                   max_samples: int | None, seed: int | str,
                   family_weights: Mapping[str, float] | None = None) -> list[Mapping[str, Any]]:
    """Keep the listed families, then cap at ``max_samples`` with a seeded shuffle (order then fixed).

    ``family_weights`` (optional, used only when ``max_samples`` caps the data) sets the share of each family
    in the sample (a family without a weight is left out; a family smaller than its share gives all it has).
    """
    chosen = select_indices([record.get("family") for record in records], families, max_samples, seed,
                            family_weights)
    return [records[index] for index in chosen]


def select_indices(record_families: Sequence[str | None], families: Sequence[str] | None, max_samples: int | None,
                   seed: int | str, family_weights: Mapping[str, float] | None = None) -> list[int]:
    """:func:`select_records` on the records' ``family`` values alone: the indices of the records it keeps, in its
    order (a shuffle draws the same permutation of indices as of records)."""
    kept = [i for i, family in enumerate(record_families) if families is None or family in families]
    if not kept:
        raise ValueError(f"no records left after keeping families {list(families or [])}")
    rng = random.Random(seed)
    if max_samples is None or max_samples >= len(kept):
        rng.shuffle(kept)
        return kept
    if not family_weights:
        return rng.sample(kept, max_samples)
    by_family: dict[str, list[int]] = {}
    for index in kept:
        by_family.setdefault(record_families[index] or "", []).append(index)
    total = sum(family_weights.get(f, 0.0) for f in by_family)
    if total <= 0:
        raise ValueError(f"family_weights {dict(family_weights)} give no weight to the families {sorted(by_family)}")
    chosen: list[int] = []
    for family in sorted(by_family):
        want = round(max_samples * family_weights.get(family, 0.0) / total)
        pool = by_family[family]
        chosen.extend(rng.sample(pool, min(want, len(pool))))
    rng.shuffle(chosen)
    return chosen


class RecordSelection:
    """The records of a file that :func:`select_records` keeps, in its order and in ``answer_style``, read from the
    file when needed: only each record's family stays in memory (what the selection is made from)."""

    def __init__(self, path: Path, families: Sequence[str] | None, max_samples: int | None, seed: int | str,
                 family_weights: Mapping[str, float] | None = None, answer_style: str = "plain"):
        from silkfire.io import iter_records

        _check_style(answer_style)
        self.path, self.answer_style = Path(path), answer_style
        names: dict[Any, Any] = {}  # one string object per family name, not one per record
        column = [names.setdefault(record.get("family"), record.get("family")) for record in iter_records(path)]
        self.order = np.asarray(select_indices(column, families, max_samples, seed, family_weights), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.order)

    def in_file_order(self) -> Iterator[Mapping[str, Any]]:
        """The selected records (styled), in the file's order: one pass over the file."""
        from silkfire.io import iter_records

        wanted = np.zeros(int(self.order.max()) + 1, dtype=bool)
        wanted[self.order] = True
        for index, record in enumerate(iter_records(self.path)):
            if index < len(wanted) and wanted[index]:
                yield styled_answer(record, self.answer_style)

    def file_order_rows(self) -> np.ndarray:
        """For each position of the selection, the rank of its record among the selected ones in file order (the
        row :meth:`in_file_order`'s encoding writes it to)."""
        return np.searchsorted(np.sort(self.order), self.order)

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        """The selected records (styled) in the selection's order: read into memory first (the file is in another
        order; only multi-turn grouping and a curriculum need them so)."""
        by_file = list(self.in_file_order())
        return (by_file[row] for row in self.file_order_rows())
