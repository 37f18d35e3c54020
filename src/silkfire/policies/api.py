"""A model behind an OpenAI-compatible chat endpoint (vLLM, OpenAI) as a policy, through silkfire.llm.client."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from silkfire.policies.base import Instruction, PolicyError

CLIENT_OPTIONS = ("timeout_s", "max_retries", "concurrency", "backoff_base_s", "backoff_max_s")


class APIPolicy:
    """One chat request per instruction (image as a data URL, then the prompt), ``concurrency`` in flight.

    The API key is read from the environment variable ``api_key_env`` by the client (never logged); None for
    endpoints without a key (a local vLLM server). Token usage accumulates in :meth:`metrics`.
    """

    def __init__(self, name: str, base_url: str, model: str, *, api_key_env: str | None = None,
                 temperature: float = 0.7, top_p: float = 1.0, max_tokens: int = 256, **client: Any):
        """``client``: more :class:`~silkfire.llm.client.ClientConfig` settings (timeout_s, max_retries,
        concurrency, backoff_base_s, backoff_max_s)."""
        from silkfire.llm.client import ClientConfig

        unknown = sorted(set(client) - set(CLIENT_OPTIONS))
        if unknown:
            raise ValueError(f"policy {name!r}: unknown API option(s) {unknown}; allowed: {list(CLIENT_OPTIONS)}")
        self.name = name
        self.top_p = top_p
        self.config = ClientConfig(base_url=base_url, model=model, api_key_env=api_key_env,
                                   temperature=float(temperature), max_tokens=int(max_tokens), **client)
        self._usage: dict[str, float] = {}

    def describe(self) -> dict[str, Any]:
        return {"kind": "api", "base_url": self.config.base_url, "model": self.config.model,
                "api_key_env": self.config.api_key_env, "temperature": self.config.temperature,
                "top_p": self.top_p, "max_tokens": self.config.max_tokens}

    def metrics(self) -> dict[str, float]:
        return dict(self._usage)

    def respond(self, instructions: Sequence[Instruction], image_root: Path, seed: int) -> list[str]:
        from silkfire.images import UnsafeImage, check_image
        from silkfire.llm.client import ApiError, ChatClient, user_message

        if not instructions:
            return []
        images = []
        for instruction in instructions:  # every image passes the path policy before the first request goes out
            try:
                images.append(check_image(image_root, instruction.image))
            except UnsafeImage as error:
                raise PolicyError(f"policy {self.name!r}: instruction {instruction.id!r}, field img_path: "
                                  f"{error}") from None
        requests = [[user_message(instruction.prompt, [image])] for instruction, image in zip(instructions, images)]
        answers: list[str | None] = [None] * len(requests)
        failures: list[str] = []
        with ChatClient(self.config) as client:
            for index, result in client.chat_many(requests, top_p=self.top_p, seed=int(seed)):
                if isinstance(result, ApiError):
                    failures.append(f"{instructions[index].id}: {result}")
                else:
                    answers[index] = result.text
            self._usage = client.usage.metrics(prefix=f"{self.name}_")
        if failures:
            shown = "; ".join(failures[:3]) + (f" and {len(failures) - 3} more" if len(failures) > 3 else "")
            raise PolicyError(f"policy {self.name!r} ({self.config.base_url}, {self.config.model}): "
                              f"{len(failures)} request(s) failed: {shown}")
        return [answer or "" for answer in answers]
