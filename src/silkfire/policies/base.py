"""What a policy answers (an instruction) and what a policy is (anything that answers a batch of them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from silkfire.world.scene import Scene


@dataclass(frozen=True)
class Instruction:
    """One multimodal instruction: a prompt about an image (path relative to the sampling image root).

    World instructions also carry their scene graph, question family/category and reference answer, which the
    scripted policies read; real (VLFeedback) prompts have none of these.
    """

    id: str
    prompt: str
    image: str
    scene: Scene | None = None
    family: str | None = None
    category: str | None = None
    answer: str | None = None


class PolicyError(RuntimeError):
    """A policy could not answer (bad configuration, unreachable endpoint, missing scene graph)."""


@runtime_checkable
class Policy(Protocol):
    """Answers instructions; ``name`` goes into the VLFeedback record's ``models`` list."""

    name: str

    def respond(self, instructions: Sequence[Instruction], image_root: Path, seed: int) -> list[str]:
        """One response per instruction, in order; ``seed`` makes sampled responses reproducible."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the policy is (kind, path/model, sampling settings) for the stage's metrics; no secrets."""
        ...
