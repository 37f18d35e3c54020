"""Tiny files in the exact published layouts of the four data sets, for tests (made here, never downloaded).

- :func:`make_mme_parquet`: lmms-lab/MME's ``data/test-*.parquet`` -- ``question_id`` (``<category>/<image file>``,
  shared by the image's two questions), ``image`` (HF ``Image`` struct ``{bytes, path}``), ``question`` (ending
  "Please answer yes or no."), ``answer`` ("Yes"/"No"), ``category``; HF's ``huggingface`` schema metadata.
- :func:`make_vlfeedback`: MMInstruction/VLFeedback -- ``id``, ``prompt``, ``models`` (4), ``completions``
  (HF ``Sequence`` of ``{annotations: {Helpfulness, Ethical Considerations, Visual Faithfulness: {Rating (a
  string), Rationale}}, model, response}``), ``img_path`` (``merged_images/<id>.jpg``), as parquet with or without
  an ``image`` bytes column, or as the JSONL export with the images under ``merged_images/``.
- :func:`make_fire`: FIRE-100K / FIRE-Bench -- a JSON list of raw dialogues (``image``, ``question``,
  ``conversations``, ``groundtruth``, ``source``, ``round``, ``score``, ``split``), images under their source's
  folder.
- :func:`make_mmhal`: MMHal-Bench -- ``response_template.json`` (8 types interleaved) + ``images/<name from
  image_src>``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MME_SUFFIX = " Please answer yes or no."
VLFEEDBACK_MODELS = ("gpt-4v", "llava-v1.5-13b", "qwen-vl-chat", "idefics-9b-instruct")
ASPECTS = ("Helpfulness", "Ethical Considerations", "Visual Faithfulness")
MMHAL_TYPES = ("attribute", "adversarial", "comparison", "counting", "relation", "environment", "holistic", "other")
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}


def image_bytes(color: str = "red", size: int = 48, fmt: str = "PNG") -> bytes:
    """A small image: a coloured square on white, encoded as ``fmt``."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (255, 255, 255))
    ImageDraw.Draw(image).rectangle([size // 4, size // 4, 3 * size // 4, 3 * size // 4], fill=COLORS[color])
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _write_parquet(path: Path, rows: list[dict[str, Any]], schema: Any, features: dict[str, Any]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    table = pa.Table.from_pylist(rows, schema=schema.with_metadata(metadata))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def _image_type() -> Any:
    import pyarrow as pa

    return pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def mme_rows(colors: Sequence[str] = ("red", "blue", "green", "yellow")) -> list[dict[str, Any]]:
    """Two questions per image (one Yes, one No), categories existence and color, images embedded as bytes."""
    rows = []
    for index, color in enumerate(colors):
        category = "existence" if index % 2 == 0 else "color"
        name = f"{index:012d}.jpg"
        image = {"bytes": image_bytes(color, fmt="JPEG"), "path": name}
        other = next(c for c in COLORS if c != color)
        if category == "existence":
            questions = [(f"Is there a {color} square in this image?", "Yes"),
                         (f"Is there a {other} square in this image?", "No")]
        else:
            questions = [(f"Is the square {color}?", "Yes"), (f"Is the square {other}?", "No")]
        for question, answer in questions:
            rows.append({"question_id": f"{category}/{name}", "image": image, "question": question + MME_SUFFIX,
                         "answer": answer, "category": category})
    return rows


def make_mme_parquet(path: str | Path, rows: list[dict[str, Any]] | None = None) -> Path:
    """lmms-lab/MME's layout (see the module docstring) with :func:`mme_rows` or the given rows."""
    import pyarrow as pa

    schema = pa.schema([("question_id", pa.string()), ("image", _image_type()), ("question", pa.string()),
                        ("answer", pa.string()), ("category", pa.string())])
    features = {"question_id": {"dtype": "string", "_type": "Value"}, "image": {"_type": "Image"},
                "question": {"dtype": "string", "_type": "Value"}, "answer": {"dtype": "string", "_type": "Value"},
                "category": {"dtype": "string", "_type": "Value"}}
    return _write_parquet(Path(path), rows if rows is not None else mme_rows(), schema, features)


def vlfeedback_rows(count: int = 3) -> list[dict[str, Any]]:
    """VLFeedback records (completions as a list of objects, the Arrow storage of HF's Sequence of struct)."""
    colors = list(COLORS)
    rows = []
    for index in range(count):
        color = colors[index % len(colors)]
        completions = []
        for rank, model in enumerate(VLFEEDBACK_MODELS):
            rating = str(5 - rank)
            completions.append({
                "annotations": {aspect: {"Rating": rating, "Rationale": f"{aspect} judged {rating}."}
                                for aspect in ASPECTS},
                "model": model,
                "response": f"The square in the image is {color if rank < 2 else 'purple'}." + " Indeed." * rank,
            })
        rows.append({"id": f"svit-conversation-{1219 + index}", "prompt": f"What colour is the square? ({index})",
                     "models": list(VLFEEDBACK_MODELS), "completions": completions,
                     "img_path": f"merged_images/svit-conversation-{1219 + index}.jpg", "_color": color})
    return rows


def make_vlfeedback(folder: str | Path, layout: str = "parquet", rows: list[dict[str, Any]] | None = None) -> Path:
    """A VLFeedback file in ``folder``: ``parquet`` (images as bytes in an ``image`` column), ``parquet-paths``
    (no image column; images under ``merged_images/``) or ``jsonl`` (the export + ``merged_images/``)."""
    import pyarrow as pa

    folder = Path(folder)
    rows = rows if rows is not None else vlfeedback_rows()
    if layout != "parquet":
        for row in rows:
            target = folder / row["img_path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(image_bytes(row.get("_color", "red"), fmt="JPEG"))
    clean = [{key: value for key, value in row.items() if not key.startswith("_")} for row in rows]
    if layout == "jsonl":
        path = folder / "vlfeedback_80k.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(row) + "\n" for row in clean), encoding="utf-8")
        return path
    note = pa.struct([("Rating", pa.string()), ("Rationale", pa.string())])
    annotations = pa.struct([(aspect, note) for aspect in ASPECTS])
    completion = pa.struct([("annotations", annotations), ("model", pa.string()), ("response", pa.string())])
    fields = [("id", pa.string()), ("prompt", pa.string()), ("models", pa.list_(pa.string())),
              ("completions", pa.list_(completion)), ("img_path", pa.string())]
    value = {"dtype": "string", "_type": "Value"}
    note_feature = {"Rating": value, "Rationale": value}
    features: dict[str, Any] = {
        "id": value, "prompt": value, "models": {"feature": value, "_type": "Sequence"},
        "completions": {"feature": {"annotations": {aspect: note_feature for aspect in ASPECTS}, "model": value,
                                    "response": value}, "_type": "Sequence"},
        "img_path": value}
    if layout == "parquet":
        fields.append(("image", _image_type()))
        features["image"] = {"_type": "Image"}
        for row, original in zip(clean, rows):
            row["image"] = {"bytes": image_bytes(original.get("_color", "red"), fmt="JPEG"), "path": None}
    elif layout != "parquet-paths":
        raise ValueError(f"layout: parquet | parquet-paths | jsonl, got {layout!r}")
    return _write_parquet(folder / "data" / "train-00000-of-00001.parquet", clean, pa.schema(fields), features)


def fire_dialogues(count: int = 4, split: str = "fire_test", source: str = "mathvista") -> list[dict[str, Any]]:
    """FIRE raw dialogues (2 rounds: a wrong answer, feedback without the answer, a right answer)."""
    colors = list(COLORS)
    records = []
    for index in range(count):
        color = colors[index % len(colors)]
        wrong = colors[(index + 1) % len(colors)]
        records.append({
            "image": f"{source}/images/{index}.png",
            "question": {"role": "user", "value": "What colour is the square in the image?"},
            "conversations": [
                {"role": "student", "type": "response", "value": f"Thought: I look at the square.\nAnswer: {wrong}\n"},
                {"role": "teacher", "type": "feedback",
                 "value": "Score: 3.\nFeedback: Look again at the colour of the square in the middle.\n"},
                {"role": "student", "type": "response", "value": f"Thought: I look again.\nAnswer: {color}\n"},
                {"role": "teacher", "type": "feedback", "value": "Score: 10.\nFeedback: Correct, well done.\n"},
            ],
            "groundtruth": {"role": "user", "value": color},
            "source": source, "round": 2, "score": [3, 10], "split": split,
        })
    return records


def make_fire(folder: str | Path, name: str = "FIRE-test.json", records: list[dict[str, Any]] | None = None,
              images: bool = True) -> Path:
    """A FIRE file (one JSON list, like FIRE-train-100K.json / FIRE-test.json) and its images under ``folder``."""
    folder = Path(folder)
    records = records if records is not None else fire_dialogues(split="fire_100k" if "train" in name else "fire_test")
    if images:
        for record in records:
            target = folder / record["image"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(image_bytes(record["groundtruth"]["value"] if record["groundtruth"]["value"] in COLORS
                                           else "red"))
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


def mmhal_items(count: int = 8) -> list[dict[str, Any]]:
    """MMHal-Bench items as in response_template.json (types interleaved, image_src a URL, empty model_answer)."""
    colors = list(COLORS)
    items = []
    for index in range(count):
        color = colors[index % len(colors)]
        items.append({
            "question_type": MMHAL_TYPES[index % len(MMHAL_TYPES)],
            "question_topic": "Shapes/square",
            "image_id": f"{index:016x}",
            "image_src": f"https://c{index}.staticflickr.com/8/{1000 + index}/{index}_abc_o.jpg",
            "image_content": [f"{color} square"],
            "question": f"What is in the middle of image {index}?",
            "gt_answer": f"A {color} square.",
            "model_answer": "",
        })
    return items


def make_mmhal(folder: str | Path, items: list[dict[str, Any]] | None = None) -> Path:
    """``<folder>/response_template.json`` + ``<folder>/images/<last part of image_src>``."""
    folder = Path(folder)
    items = items if items is not None else mmhal_items()
    for item in items:
        name = item["image_src"].rsplit("/", 1)[-1]
        target = folder / "images" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        color = item["image_content"][0].split()[0] if item["image_content"] else "red"
        target.write_bytes(image_bytes(color if color in COLORS else "red", fmt="JPEG"))
    path = folder / "response_template.json"
    path.write_text(json.dumps(items, indent=2), encoding="utf-8")
    return path
