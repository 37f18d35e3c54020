"""The policy pool: built from config, K policies drawn per instruction (seeded), responses as VLFeedback records.

Pool entries (``silkie.sample.pool``: name -> entry), every key but ``kind`` optional:

- ``{kind: scripted, profile: hallucinate}`` -- a scripted world policy (profile defaults to the entry name);
- ``{kind: hf, path: models/sft/model, temperature: 0.7}`` -- a local HF model folder (a base-stage folder
  holding ``source.json`` resolves to the checkpoint it names);
- ``{kind: checkpoints, path: models/sft/checkpoints}`` -- one hf policy per ``checkpoint-<step>`` folder found
  (named ``<name>-<step>``): the SFT model at different steps;
- ``{kind: api, base_url: http://127.0.0.1:8000/v1, model: llava-hf/llava-1.5-7b-hf, api_key_env: OPENAI_API_KEY}``
  -- an OpenAI-compatible endpoint (vLLM, OpenAI); the key is read from the named environment variable;
  optional client settings: timeout_s, max_retries, concurrency, backoff_base_s, backoff_max_s.

An entry set to null is left out. ``weight`` (default 1) makes an entry more or less likely to be drawn (a ``checkpoints`` entry shares it among
its checkpoints). Sampling settings not given per entry come from the pool defaults.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from silkfire.policies.base import Instruction, Policy
from silkfire.world.config import WorldConfig

KINDS = ("scripted", "hf", "checkpoints", "api")


@dataclass
class PoolEntry:
    policy: Policy
    weight: float = 1.0


@dataclass
class SamplingDefaults:
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 48
    batch_size: int = 32
    dtype: str = "auto"  # silkfire.runtime: the sample stage passes runtime.dtype / runtime.device
    device: str = "auto"
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def _checkpoint_dirs(path: Path) -> list[tuple[int, Path]]:
    found = []
    for child in path.glob("checkpoint-*") if path.is_dir() else []:
        step = child.name.rsplit("-", 1)[-1]
        if child.is_dir() and step.isdigit() and (child / "config.json").is_file():
            found.append((int(step), child))
    return sorted(found)


def build_pool(entries: Mapping[str, Mapping[str, Any]], root: Path, defaults: SamplingDefaults,
               world: WorldConfig | None = None) -> dict[str, PoolEntry]:
    """Policies by name from the config's pool entries (paths relative to ``root``)."""
    from silkfire.policies.hf import HFPolicy
    from silkfire.policies.scripted import ScriptedPolicy
    from silkfire.artefacts import resolve_base

    pool: dict[str, PoolEntry] = {}
    for name, raw in entries.items():
        if raw is None:  # `name: null` leaves a default member out (experiment files remove them that way)
            continue
        entry = dict(raw)
        kind = entry.pop("kind", None)
        weight = float(entry.pop("weight", 1.0))
        where = f"silkie.sample.pool.{name}"
        if kind not in KINDS:
            raise ValueError(f"{where}.kind: expected one of {list(KINDS)}, got {kind!r}")
        if weight <= 0:
            raise ValueError(f"{where}.weight: must be > 0, got {weight}")
        sampling = {key: entry.pop(key, getattr(defaults, key))
                    for key in ("temperature", "top_p", "max_new_tokens", "batch_size")}
        if kind == "scripted":
            if world is None:
                raise ValueError(f"{where}: scripted policies need the world (instructions from the shapes world)")
            pool[name] = PoolEntry(ScriptedPolicy(str(entry.pop("profile", name)), world, name=name), weight)
        elif kind in ("hf", "checkpoints"):
            if "path" not in entry:
                raise ValueError(f"{where}.path: missing (a model folder{' of checkpoints' * (kind == 'checkpoints')})")
            path = root / str(entry.pop("path"))
            if kind == "hf":
                source = resolve_base(path) if (path / "source.json").is_file() else path
                pool[name] = PoolEntry(HFPolicy(name, source, dtype=defaults.dtype, device=defaults.device,
                                                progress=defaults.progress, **sampling), weight)
            else:
                found = _checkpoint_dirs(path)
                for step, folder in found:
                    pool[f"{name}-{step}"] = PoolEntry(
                        HFPolicy(f"{name}-{step}", folder, dtype=defaults.dtype, device=defaults.device,
                                 progress=defaults.progress, **sampling), weight / len(found))
        else:
            from silkfire.policies.api import CLIENT_OPTIONS, APIPolicy

            for key in ("base_url", "model"):
                if not entry.get(key):
                    raise ValueError(f"{where}.{key}: missing (an OpenAI-compatible endpoint needs base_url and model)")
            pool[name] = PoolEntry(APIPolicy(
                name, str(entry.pop("base_url")), str(entry.pop("model")),
                api_key_env=entry.pop("api_key_env", None), temperature=float(sampling["temperature"]),
                top_p=float(sampling["top_p"]), max_tokens=int(sampling["max_new_tokens"]),
                **{key: entry.pop(key) for key in CLIENT_OPTIONS if key in entry},
            ), weight)
        if entry:
            raise ValueError(f"{where}: unknown key(s) {sorted(entry)} for kind {kind!r}")
    return pool


def draw_policies(instruction_id: str, pool: Mapping[str, PoolEntry], k: int, seed: int) -> list[str]:
    """``k`` distinct policy names for one instruction: weighted sampling without replacement, seeded by the
    instruction id (so an instruction's policies do not depend on the other instructions)."""
    if k > len(pool):
        raise ValueError(f"cannot draw {k} distinct policies from a pool of {len(pool)}: {sorted(pool)}")
    rng = random.Random(f"silkfire-pool/{seed}/{instruction_id}")
    # Efraimidis-Spirakis: the k largest u^(1/w) are a weighted sample without replacement
    keys = {name: rng.random() ** (1.0 / pool[name].weight) for name in sorted(pool)}
    return sorted(keys, key=lambda name: -keys[name])[:k]


def draw_all(instructions: Sequence[Instruction], pool: Mapping[str, PoolEntry], k: int, seed: int
             ) -> tuple[dict[str, list[str]], dict[str, list[Instruction]]]:
    """Each instruction's ``k`` policies, and each policy's instructions (in instruction order)."""
    draws = {instruction.id: draw_policies(instruction.id, pool, k, seed) for instruction in instructions}
    assigned: dict[str, list[Instruction]] = {name: [] for name in pool}
    for instruction in instructions:
        for name in draws[instruction.id]:
            assigned[name].append(instruction)
    return draws, assigned


def respond_assigned(assigned: Mapping[str, Sequence[Instruction]], pool: Mapping[str, PoolEntry], image_root: Path,
                     seed: int, progress: bool = True) -> dict[tuple[str, str], str]:
    """(instruction id, policy name) -> answer; every policy answers all of its instructions in one call."""
    responses: dict[tuple[str, str], str] = {}
    for name in tqdm(sorted(assigned), desc="policies", unit="policy", disable=not progress):
        todo = assigned[name]
        if not todo:
            continue
        answers = pool[name].policy.respond(todo, image_root, seed)
        if len(answers) != len(todo):
            raise RuntimeError(f"policy {name!r} returned {len(answers)} answers for {len(todo)} instructions")
        for instruction, answer in zip(todo, answers):
            responses[(instruction.id, name)] = answer
    return responses


def assemble_records(instructions: Sequence[Instruction], draws: Mapping[str, Sequence[str]],
                     responses: Mapping[tuple[str, str], str]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """VLFeedback-format records (no annotations) in instruction order, and blank answers per policy."""
    blank: dict[str, int] = {}
    records = []
    for instruction in instructions:
        completions = []
        for name in draws[instruction.id]:
            text = responses[(instruction.id, name)].strip()
            if not text:
                blank[name] = blank.get(name, 0) + 1
                text = "(no answer)"
            completions.append({"model": name, "response": text, "annotations": None})
        record: dict[str, Any] = {"id": instruction.id, "prompt": instruction.prompt, "models": draws[instruction.id],
                                  "completions": completions, "img_path": instruction.image}
        if instruction.scene is not None:
            record.update({"scene_id": instruction.scene.scene_id, "family": instruction.family,
                           "category": instruction.category, "answer": instruction.answer})
        records.append(record)
    return records, blank


def pool_stats(pool: Mapping[str, PoolEntry], assigned: Mapping[str, Sequence[Instruction]], blank: dict[str, int],
               usage: dict[str, Any]) -> dict[str, Any]:
    return {"responses": {name: len(todo) for name, todo in assigned.items()}, "blank": blank, "usage": usage,
            "policies": {name: pool[name].policy.describe() | {"weight": pool[name].weight} for name in pool}}


def sample_responses(instructions: Sequence[Instruction], pool: Mapping[str, PoolEntry], image_root: Path, *,
                     k: int = 4, seed: int = 0, progress: bool = True) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """VLFeedback-format records (no annotations yet) and per-policy counts.

    Every policy answers all of its instructions in one call (a model is loaded once). Blank responses (a model
    that stops at once) are kept as the literal ``(no answer)`` so the record stays valid; they are counted.
    (The sample stage does the same through :mod:`silkfire.fanout`, one batch-aligned work item per policy batch.)
    """
    draws, assigned = draw_all(instructions, pool, k, seed)
    responses = respond_assigned(assigned, pool, image_root, seed, progress)
    records, blank = assemble_records(instructions, draws, responses)
    usage = {key: value for entry in pool.values() if hasattr(entry.policy, "metrics")
             for key, value in entry.policy.metrics().items()}  # API token counts / cost
    return records, pool_stats(pool, assigned, blank, usage)
