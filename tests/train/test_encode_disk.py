"""Encoding flat in memory (train.data.encode_sft_to_disk): the same items as the in-memory encoding, element for
element, for every family; a file's selection streamed in file order; the files in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from silkfire.images import UnsafeImage
from silkfire.io import read_records, write_jsonl
from silkfire.models.loading import load_vlm
from silkfire.models.testing import REAL_FAMILIES, make_real_checkpoint, make_test_model, make_test_world
from silkfire.train.data import (SFTCollator, DiskSFTData, ImageStore, RecordSelection, collate_images,
                                 encode_sft_records, encode_sft_to_disk, select_records, styled_answers)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_world(tmp_path_factory.mktemp("world"), train_scenes=4, val_scenes=1, test_scenes=1)


@pytest.fixture(scope="module")
def processor(tmp_path_factory: pytest.TempPathFactory):
    return load_vlm(make_test_model(tmp_path_factory.mktemp("model") / "m"))[1]


def assert_same_items(expected, actual) -> None:
    assert len(actual) == len(expected)
    for index in range(len(expected)):
        want, got = expected[index], actual[index]
        assert want.keys() == got.keys(), index
        for key in want:
            assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), (index, key)


@pytest.mark.parametrize("turns_per_sample", [1, 3])
def test_disk_items_equal_the_in_memory_encoding(world: Path, processor, turns_per_sample: int) -> None:
    records = styled_answers(select_records(read_records(world / "train.jsonl"), None, 40, seed=2), "explained")
    reference = encode_sft_records(records, processor, world, progress=False, turns_per_sample=turns_per_sample,
                                   seed=2)
    data = encode_sft_to_disk(records, processor, world, progress=False, turns_per_sample=turns_per_sample, seed=2)
    assert_same_items(reference, data)
    assert data.lengths.tolist() == [len(ids) for ids in reference.input_ids]
    assert data.input_ids[0].dtype == data.labels[0].dtype == torch.long
    collate = SFTCollator(processor.tokenizer.pad_token_id)
    batch, expected = collate([data[i] for i in (0, 5, 9)]), collate([reference[i] for i in (0, 5, 9)])
    assert all(torch.equal(batch[key], expected[key]) for key in expected)


@pytest.mark.parametrize("turns_per_sample", [1, 2])
def test_a_selection_streamed_from_its_file_encodes_like_its_records(world: Path, processor,
                                                                     turns_per_sample: int) -> None:
    path = world / "train.jsonl"
    weights = {"mme": 2.0, "open": 1.0, "probe": 1.0}
    selection = RecordSelection(path, None, 30, 5, weights, "explained")
    records = styled_answers(select_records(read_records(path), None, 30, 5, weights), "explained")
    assert list(selection) == records
    reference = encode_sft_records(records, processor, world, progress=False, turns_per_sample=turns_per_sample,
                                   seed=5)
    data = encode_sft_to_disk(selection, processor, world, progress=False, turns_per_sample=turns_per_sample, seed=5)
    assert_same_items(reference, data)
    assert data.lengths.tolist() == [len(ids) for ids in reference.input_ids]


def test_files_live_in_a_temporary_folder_removed_on_close(world: Path, processor, tmp_path: Path) -> None:
    records = read_records(world / "train.jsonl")[:8]
    data = encode_sft_to_disk(records, processor, world, progress=False)
    folder = data.folder
    assert {p.name for p in folder.iterdir()} == {"ids.i32", "labels.i32", "offsets.i64", "image.i32"}
    assert world not in folder.parents and Path.cwd() not in folder.parents
    data.close()
    assert not folder.exists()
    kept = encode_sft_to_disk(records, processor, world, progress=False, cache_dir=tmp_path / "cache")
    assert kept.folder == tmp_path / "cache" and isinstance(kept, DiskSFTData)


def test_digest_follows_tokens_order_and_image_files(world: Path, processor, tmp_path: Path) -> None:
    records = read_records(world / "train.jsonl")[:6]
    digest = encode_sft_to_disk(records, processor, world, progress=False).digest()
    assert encode_sft_to_disk(records, processor, world, progress=False).digest() == digest
    assert encode_sft_to_disk(records[::-1], processor, world, progress=False).digest() != digest
    changed = [dict(records[0], answer="Maybe")] + records[1:]
    assert encode_sft_to_disk(changed, processor, world, progress=False).digest() != digest
    image = world / records[0]["image"]
    copy = tmp_path / "world"
    (copy / image.parent.name).mkdir(parents=True)
    Image.open(image).rotate(90).save(copy / records[0]["image"])
    for record in records[1:]:
        if not (copy / record["image"]).exists():
            (copy / record["image"]).write_bytes((world / record["image"]).read_bytes())
    assert encode_sft_to_disk(records, processor, copy, progress=False).digest() != digest


def test_image_cache_is_bounded_in_bytes(world: Path, processor) -> None:
    relatives = sorted({record["image"] for record in read_records(world / "train.jsonl")})
    one = ImageStore(processor, world, relatives)[0]["pixel_values"]
    store = ImageStore(processor, world, relatives, cache_bytes=2 * one.numel() * one.element_size())
    for index in range(len(relatives)):
        assert torch.equal(store[index]["pixel_values"], ImageStore(processor, world, relatives)[index]["pixel_values"])
    assert len(store._cache) == 2 and list(store._cache) == [len(relatives) - 2, len(relatives) - 1]


def test_a_refused_image_stops_encoding(processor, tmp_path: Path) -> None:
    records = [{"image": "images/nope.png", "question": "Is there a red circle?", "answer": "No"}]
    with pytest.raises(UnsafeImage, match="nope.png.*file not found"):
        encode_sft_to_disk(records, processor, tmp_path, progress=False)
    with pytest.raises(ValueError, match="no records"):
        encode_sft_to_disk([], processor, tmp_path, progress=False)


def test_every_family_encodes_alike_on_disk(tmp_path: Path) -> None:
    """Per-image processing (the ImageStore) gives each family's inputs exactly as the batched processor call does:
    LLaVA-1.5's fixed 336-px tensors, LLaVA-NeXT's anyres tiles + image_sizes, Qwen2-VL's patches + grid."""
    images = tmp_path / "images"
    images.mkdir()
    sizes = {"square.png": (48, 48), "wide.png": (120, 60), "tall.png": (40, 90)}
    for index, (name, size) in enumerate(sizes.items()):
        Image.new("RGB", size, (200, 30 * index, 30)).save(images / name)
    records = [{"image": name, "question": f"Question {index}?", "answer": "Yes" if index % 2 else "No"}
               for index, name in enumerate(list(sizes) * 2)]
    records.append({"image": "wide.png", "turns": [["What colour?", "Blue."], ["Are you sure?", "Yes"]]})
    for family in REAL_FAMILIES:
        _, processor = load_vlm(make_real_checkpoint(family, tmp_path / family), device="cpu")
        reference = encode_sft_records(records, processor, images, progress=False)
        data = encode_sft_to_disk(records, processor, images, progress=False)
        assert_same_items(reference, data)
        picked = [0, 2, 1, 6]
        batch = data.images.batch([int(data.image_index[i]) for i in picked])
        expected = collate_images([{k: v for k, v in reference[i].items() if k not in ("input_ids", "labels")}
                                   for i in picked])
        assert batch.keys() == expected.keys() and all(torch.equal(batch[k], expected[k]) for k in batch), family


def test_record_selection_reads_only_what_it_keeps(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    records = [{"id": i, "family": "mme" if i % 3 else "open", "image": "x.png", "question": "q", "answer": "a"}
               for i in range(50)]
    write_jsonl(path, records)
    selection = RecordSelection(path, ["open"], 5, seed=1)
    assert len(selection) == 5
    assert list(selection) == select_records(records, ["open"], 5, seed=1)
    assert [r["id"] for r in selection.in_file_order()] == sorted(r["id"] for r in list(selection))
