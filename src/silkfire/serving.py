"""A registered Silkfire VLM as an MLflow pyfunc model: image + question in, answer text out.

Every registered model (silkfire-sft, silkfire-dpo, silkfire-fire-student, silkfire-fire-teacher) is logged by
:func:`silkfire.tracking.registry.log_and_register` as an MLflow model of the ``python_function`` flavour:

- the weights stay the Hugging Face folder (config, safetensors, processor), copied among the model's artefacts
  (artefact ``hf_model``; :func:`silkfire.tracking.registry.hf_model_dir` finds it); nothing is pickled;
- the model's code is *referenced*, not pickled (MLflow's models-from-code): ``silkfire/serving_model.py`` is copied
  into the model and builds :class:`SilkfireVLM`; the ``silkfire`` package is copied beside it (``code_paths``), so
  the model loads with the code that logged it;
- a signature (``image``: binary, ``question``: string -> ``answer``: string; param ``max_new_tokens``) and an input
  example (a 48x48 PNG and a question) are logged with it.

Use it::

    model = mlflow.pyfunc.load_model("models:/silkfire-sft@champion")
    model.predict({"image": [png_bytes], "question": ["Is there a red circle?"]})   # -> ["Yes"]

    mlflow models serve -m models:/silkfire-sft@champion --env-manager local -p 5001
    curl -X POST 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
         -d '{"dataframe_split": {"columns": ["image", "question"], "data": [["<base64 PNG>", "Is there ...?"]]}}'

Images in a request are bytes (over HTTP: base64, which MLflow decodes for the binary column), decoded under the
image policy's pixel and size limits (:mod:`silkfire.images`); a request never names a file to read.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

import mlflow.pyfunc

HF_ARTIFACT = "hf_model"  # the artefact key of the Hugging Face model folder (MLmodel names its path)
DEFAULT_MAX_NEW_TOKENS = 32
MAX_NEW_TOKENS_LIMIT = 1024
DEVICE_ENV = "SILKFIRE_SERVE_DEVICE"  # auto | cpu | cuda | cuda:N (silkfire.runtime), default auto
DTYPE_ENV = "SILKFIRE_SERVE_DTYPE"  # auto | float32 | bfloat16 | float16, default auto


class BadRequest(ValueError):
    """A request row that cannot be answered (not an image, too large, no question); the message says which."""


def decode_image(data: Any, row: int = 0) -> Any:
    """Bytes of a PNG/JPEG/... (or their base64 text) -> an RGB PIL image, under the image policy's limits.

    A string is only ever base64 image data, never a path: a request cannot make the server read a file."""
    from silkfire.images import MAX_IMAGE_BYTES, UnsafeImage, _decode, max_pixels

    if isinstance(data, str):
        try:
            data = base64.b64decode(data, validate=False)
        except (binascii.Error, ValueError) as error:
            raise BadRequest(f"row {row}: image is text but not base64 ({error})") from None
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    if not isinstance(data, bytes) or not data:
        raise BadRequest(f"row {row}: image must be non-empty bytes (base64 in JSON), got {type(data).__name__}")
    if len(data) > MAX_IMAGE_BYTES:
        raise BadRequest(f"row {row}: image of {len(data)} bytes is over the limit of {MAX_IMAGE_BYTES}")
    try:
        image = _decode(io.BytesIO(data), Path(f"<request row {row}>"), max_pixels(), full=True)
    except UnsafeImage as error:
        raise BadRequest(f"row {row}: {error.reason}") from None
    return image.convert("RGB")


def _rows(model_input: Any) -> list[tuple[Any, str]]:
    """(image, question) pairs from a DataFrame, a dict of columns or a list of dicts."""
    import pandas as pd

    if isinstance(model_input, dict):
        model_input = pd.DataFrame({key: value if isinstance(value, list) else [value]
                                    for key, value in model_input.items()})
    elif isinstance(model_input, list):
        model_input = pd.DataFrame(model_input)
    if not isinstance(model_input, pd.DataFrame):
        raise BadRequest(f"expected a table with columns image and question, got {type(model_input).__name__}")
    missing = [column for column in ("image", "question") if column not in model_input.columns]
    if missing:
        raise BadRequest(f"missing column(s) {', '.join(missing)}: every row needs an image and a question")
    rows = []
    for index, (image, question) in enumerate(zip(model_input["image"], model_input["question"])):
        if not isinstance(question, str) or not question.strip():
            raise BadRequest(f"row {index}: question must be non-empty text")
        rows.append((image, question))
    return rows


class SilkfireVLM(mlflow.pyfunc.PythonModel):
    """Greedy answers of a Silkfire VLM (the project's own loader and generation, as evaluation uses them)."""

    # No type hints on these two: MLflow reads them as a schema; the logged signature is the schema.
    def load_context(self, context):  # noqa: ANN001, ANN201
        import os

        from silkfire.models.loading import load_vlm

        self.model, self.processor = load_vlm(Path(context.artifacts[HF_ARTIFACT]),
                                              device=os.environ.get(DEVICE_ENV, "auto"),
                                              dtype=os.environ.get(DTYPE_ENV, "auto"))

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        from silkfire.eval.answers import generate_batch, generation_mode
        from silkfire.train.data import prompt_text

        max_new_tokens = int((params or {}).get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
        if not 1 <= max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise BadRequest(f"max_new_tokens must be in 1..{MAX_NEW_TOKENS_LIMIT}, got {max_new_tokens}")
        rows = _rows(model_input)
        images = [decode_image(image, index) for index, (image, _) in enumerate(rows)]
        prompts = [prompt_text(self.processor, question) for _, question in rows]
        if not rows:
            return []
        with generation_mode(self.model, self.processor):
            return generate_batch(self.model, self.processor, prompts, images, max_new_tokens=max_new_tokens)


def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", "image"), ColSpec("string", "question")]),
        outputs=Schema([ColSpec("string", "answer")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", DEFAULT_MAX_NEW_TOKENS)]),
    )


def example_image() -> bytes:
    """A 48x48 PNG of the shapes world's kind (a red square top left, a blue circle in the centre)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (48, 48), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((3, 3, 12, 12), fill=(220, 30, 30))
    draw.ellipse((19, 19, 28, 28), fill=(30, 60, 220))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def input_example() -> Any:
    import pandas as pd

    return pd.DataFrame({"image": [example_image()], "question": ["Is there a red square in the image?"]})


def requirements() -> list[str]:
    """The pinned packages the model needs to load (the environment it was logged from); the silkfire package
    itself travels with the model as code."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "pillow", "pandas", "numpy",
                 "omegaconf", "pyyaml", "tqdm"):
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return pins
