"""FIRE teachers: the ``Teacher`` protocol, the API teacher, the trained (local VLM) teacher, the factory.

A teacher reads one student turn and writes one teacher turn::

    teacher.judge(items: Sequence[TeacherInput], image_root: Path) -> list[str | None]
    # "Score: N.\\nFeedback: ..." per item, in order; None when the teacher could not answer (API failure after
    # retries): the dialogue loop drops that dialogue and counts it.

Teachers (``conf/fire/teacher/<kind>.yaml``, built by :func:`build_teacher`):

- ``oracle`` (default; :class:`silkfire.fire.oracle_teacher.OracleTeacher`): scores against the shapes world's scene graph
  with stated rules and writes feedback that guides without giving the answer away. Needs ``TeacherInput.scene``
  for the world's question kinds; other questions get a ground-truth text comparison.
- ``api`` (:class:`ApiTeacher`): FIRE's teacher prompt (silkfire.fire.prompts) through the OpenAI-compatible
  client (silkfire.llm.client): three user messages, image in the first, temperature 0 by default.
- ``trained`` (:class:`TrainedTeacher`): a local HF VLM folder (FD-LLaVA analogue, trained by the fire_teacher stage)
  prompted with the same texts joined into one user turn; greedy, ``max_new_tokens`` 160 (FIRE-1M's setting).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from silkfire.fire.prompts import teacher_instruction, teacher_messages, teacher_prompt
from silkfire.fire.text import TeacherInput  # defined beside the turn texts; importable from here too

TEACHER_KINDS = ("oracle", "api", "trained")


@runtime_checkable
class Teacher(Protocol):
    """Writes one ``"Score: N.\\nFeedback: ..."`` turn per input (None: no answer, see the module docstring)."""

    name: str

    def judge(self, items: Sequence[TeacherInput], image_root: Path | None = None) -> list[str | None]:
        ...

    def describe(self) -> dict[str, Any]:
        """What the teacher is, for MLflow params (never a secret)."""
        ...


class ApiTeacher:
    """FIRE's teacher prompt through an OpenAI-compatible endpoint (GPT-4o, or any model served by vLLM)."""

    def __init__(self, client_config: Mapping[str, Any], name: str = "api", send_image: bool = True):
        from silkfire.llm.client import ClientConfig

        self.config = ClientConfig.from_mapping(client_config)
        self.name = name
        self.send_image = send_image
        self.usage: dict[str, float] = {}

    def describe(self) -> dict[str, Any]:
        return {"kind": "api", "send_image": self.send_image, **self.config.params()}

    def messages(self, item: TeacherInput, image_root: Path | None) -> list[dict[str, Any]]:
        from silkfire.images import check_image
        from silkfire.llm.client import user_message

        first, instruction, response = teacher_messages(item.question, item.groundtruth, item.response)
        images = [check_image(image_root or ".", item.image)] if self.send_image and item.image else []
        return [user_message(first, images=images), user_message(instruction), user_message(response)]

    def judge(self, items: Sequence[TeacherInput], image_root: Path | None = None) -> list[str | None]:
        from silkfire.llm.client import ApiError, ChatClient

        requests = [self.messages(item, image_root) for item in items]
        replies: list[str | None] = [None] * len(items)
        with ChatClient(self.config) as client:
            for index, outcome in client.chat_many(requests):
                replies[index] = None if isinstance(outcome, ApiError) else outcome.text
            self.usage = client.usage.metrics()
        return replies


class TrainedTeacher:
    """A local VLM folder (the trained FD-LLaVA analogue) prompted with the teacher texts as one user turn."""

    def __init__(self, path: str | Path, name: str = "trained", *, dtype: str = "auto", device: str = "auto",
                 batch_size: int = 16, max_new_tokens: int = 160, instruction: str = "fire", progress: bool = True):
        teacher_instruction(instruction)  # fail early on a bad name
        self.instruction = instruction
        self.path = str(path)
        self.name = name
        self.dtype, self.device = dtype, device
        self.batch_size, self.max_new_tokens, self.progress = batch_size, max_new_tokens, progress
        self._loaded: tuple[Any, Any] | None = None

    def describe(self) -> dict[str, Any]:
        return {"kind": "trained", "path": self.path, "dtype": self.dtype, "max_new_tokens": self.max_new_tokens,
                "instruction": self.instruction}

    def _model(self) -> tuple[Any, Any]:
        if self._loaded is None:
            from silkfire.models.loading import load_vlm

            self._loaded = load_vlm(self.path, dtype=self.dtype, device=self.device)
        return self._loaded

    def judge(self, items: Sequence[TeacherInput], image_root: Path | None = None) -> list[str | None]:
        from silkfire.fire.generation import generate_chat

        model, processor = self._model()
        conversations = [[(teacher_prompt(item.question, item.groundtruth, item.response, self.instruction), None)]
                         for item in items]
        images = [item.image or "" for item in items]
        return list(generate_chat(model, processor, conversations, images, Path(image_root or "."),
                                  batch_size=self.batch_size, max_new_tokens=self.max_new_tokens,
                                  progress=self.progress, desc="teacher"))


def build_teacher(cfg: Mapping[str, Any], *, root: Path | None = None, world: Any = None) -> Teacher:
    """A teacher from its config group (``fire.teacher``: conf/fire/teacher/{oracle,api,trained}.yaml).

    ``kind: oracle`` (+ optional ``name``); ``kind: api`` with the silkfire.llm.client.ClientConfig keys
    (``base_url``, ``model``, ``api_key_env``, ``concurrency``, ..., flat as in conf/silkie/judge/api.yaml, or
    nested under ``client``) and ``send_image``; ``kind: trained`` with ``path`` (relative to
    ``root``), ``dtype``, ``device``, ``batch_size``, ``max_new_tokens``, ``instruction`` (fire | short: the one
    the teacher was trained with, silkfire.fire.prompts). ``world``: the WorldConfig (or its
    mapping) the oracle parses answers with (default: the shapes world defaults).
    """
    data = dict(cfg)
    kind = data.pop("kind", None)
    name = str(data.pop("name", None) or kind)
    if kind == "oracle":
        from silkfire.fire.oracle_teacher import OracleTeacher

        _no_extra(kind, data)
        return OracleTeacher(world=world, name=name)
    if kind == "api":
        client = _client_keys(data)
        send_image = bool(data.pop("send_image", True))
        _no_extra(kind, data)
        return ApiTeacher(dict(client), name=name, send_image=send_image)
    if kind == "trained":
        path = data.pop("path", None)
        if not path:
            raise ValueError("fire teacher kind trained needs 'path' (a model folder, e.g. models/fire_teacher/model)")
        full = Path(path) if root is None or Path(path).is_absolute() else Path(root) / path
        keys = ("dtype", "device", "batch_size", "max_new_tokens", "instruction")
        options = {key: data.pop(key) for key in keys if key in data}
        _no_extra(kind, data)
        return TrainedTeacher(full, name=name, **options)
    raise ValueError(f"fire teacher: unknown kind {kind!r}; kinds are {list(TEACHER_KINDS)}")


def _client_keys(data: dict[str, Any]) -> dict[str, Any]:
    """The client settings of an api teacher/student config: a nested ``client`` mapping, or the flat keys."""
    from silkfire.llm.client import ClientConfig

    nested = data.pop("client", None)
    if nested is not None:
        if not isinstance(nested, Mapping):
            raise ValueError("'client' must be a mapping of silkfire.llm.client.ClientConfig keys")
        return dict(nested)
    client = {key: data.pop(key) for key in ClientConfig.KEYS if key in data}
    if "base_url" not in client or "model" not in client:
        raise ValueError("an api teacher/student needs base_url and model (silkfire.llm.client.ClientConfig keys)")
    return client


def _no_extra(kind: str, data: Mapping[str, Any]) -> None:
    if data:
        raise ValueError(f"fire teacher kind {kind}: unknown key(s) {sorted(data)}")
