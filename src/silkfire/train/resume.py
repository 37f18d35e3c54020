"""Resume by default: a training run finds its own checkpoints after a crash, and never continues someone else's.

Every run writes ``<checkpoints>/fingerprint.json`` before its first step: a digest of what it trains on -- the
training settings (less :data:`RESUME_FREE`, which a resumed run may change), the content of the encoded training
and eval data (token ids and labels, the image files' bytes and the image processor's settings), the
start model's files, and the training code (``silkfire.train``, ``silkfire.models``) with the versions of the
libraries that run it. The next run computes the same digest and, with ``resume: auto`` (the default):

- ``resumed``: the checkpoints carry this run's fingerprint -- continue from the newest complete one;
- ``restarted (why)``: checkpoints are there but from other settings, data, start model or code (each difference
  is named), or carry no fingerprint -- they are removed and training starts at step 0;
- ``fresh``: there is no checkpoint.

``resume: true`` resumes even a checkpoint without a fingerprint and fails (naming the differences) instead of
restarting; ``resume: false`` always starts over. The decision is printed and, when an MLflow run is active, set
as its tags ``silkfire.resume`` (fresh | resumed | restarted), ``silkfire.resume_reason``,
``silkfire.resumed_from`` (the step, 0 when starting over) and ``silkfire.fingerprint``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODES = ("auto", "true", "false")
RESUME_FREE = ("resume", "progress", "num_threads", "device", "gradient_checkpointing")  # settings a resumed
# run may change (the device and activation recomputation do not change the math; the resolved dtype does)
STATE_FILE = "fingerprint.json"
CODE_PACKAGES = ("silkfire.train", "silkfire.models")
LIBRARIES = ("torch", "transformers", "peft", "safetensors", "accelerate")


def resume_mode(value: Any) -> str:
    """``auto`` | ``true`` | ``false`` from a bool or a string (YAML may give either)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip().lower()
    if text not in MODES:
        raise ValueError(f"resume must be one of {list(MODES)} (or a bool), got {value!r}")
    return text


# ---- digests -----------------------------------------------------------------------------------------------------
def _json(value: Any) -> Any:
    """A JSON-comparable copy (tuples as lists, mappings as dicts)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def digest_of(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(_json(parts), sort_keys=True).encode()).hexdigest()[:20]


def tensors_digest(*groups: Any) -> str:
    """Digest of tensors (or lists of tensors / ints) by dtype, shape and bytes: the data a run trains on."""
    import torch

    digest = hashlib.sha256()

    def add(value: Any) -> None:
        if torch.is_tensor(value):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy() if tensor.numel() else b"")
        elif isinstance(value, (list, tuple)) and value and all(torch.is_tensor(item) for item in value):
            add([int(item.numel()) for item in value])  # one concatenation: fast for many small samples
            add(torch.cat([item.detach().reshape(-1) for item in value]))
        elif isinstance(value, (list, tuple)):
            digest.update(f"[{len(value)}".encode())
            if value and all(isinstance(item, (int, str)) for item in value):
                digest.update(json.dumps(list(value)).encode())
            else:
                for item in value:
                    add(item)
        else:
            digest.update(json.dumps(value, default=str).encode())

    for group in groups:
        add(group)
    return digest.hexdigest()[:20]


def model_digest(source: str | Path) -> str:
    """Content digest of a local model folder (its top-level files); a hub name is its own identity."""
    from silkfire.io import file_digest

    path = Path(source)
    if not path.is_dir():
        return f"name:{source}"
    files = sorted(p for p in path.iterdir() if p.is_file())
    return digest_of([(p.name, file_digest(p)) for p in files])


def code_digest() -> str:
    """Digest of the training code and the versions of the libraries it runs on."""
    import importlib
    import importlib.metadata

    from silkfire.io import file_digest

    entries: list[Any] = []
    for package in CODE_PACKAGES:
        folder = Path(importlib.import_module(package).__file__).parent  # type: ignore[arg-type]
        entries += [(f"{package}/{p.relative_to(folder).as_posix()}", file_digest(p))
                    for p in sorted(folder.rglob("*.py")) if "__pycache__" not in p.parts]
    for library in LIBRARIES:
        try:
            entries.append((library, importlib.metadata.version(library)))
        except importlib.metadata.PackageNotFoundError:
            entries.append((library, None))
    return digest_of(entries)


def fingerprint(config: Mapping[str, Any], inputs: Mapping[str, str]) -> dict[str, Any]:
    """What a run trains on: its settings (less :data:`RESUME_FREE`) and input digests (+ the code's)."""
    settings = {key: value for key, value in _json(dict(config)).items() if key not in RESUME_FREE}
    parts = {**dict(inputs), "code": code_digest()}
    return {"digest": digest_of(settings, parts), "config": settings, "inputs": parts}


def differences(saved: Mapping[str, Any], current: Mapping[str, Any], limit: int = 6) -> list[str]:
    """Human-readable differences between two fingerprints ('learning_rate 0.001 -> 0.0003', 'train_data')."""
    found: list[str] = []
    old_config, new_config = saved.get("config") or {}, current.get("config") or {}
    for key in sorted(set(old_config) | set(new_config)):
        if old_config.get(key) != new_config.get(key):
            found.append(f"{key} {old_config.get(key)!r} -> {new_config.get(key)!r}")
    old_inputs, new_inputs = saved.get("inputs") or {}, current.get("inputs") or {}
    for key in sorted(set(old_inputs) | set(new_inputs)):
        if old_inputs.get(key) != new_inputs.get(key):
            found.append(f"{key} changed")
    if not found and saved.get("digest") != current.get("digest"):
        found.append("fingerprint differs")
    return found[:limit] + ([f"... {len(found) - limit} more"] if len(found) > limit else [])


# ---- the decision ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResumeDecision:
    action: str  # fresh | resumed | restarted
    reason: str
    checkpoint: Path | None  # the checkpoint resumed from
    step: int  # its step (0 when starting over)
    digest: str

    @property
    def resumed(self) -> bool:
        return self.action == "resumed"

    def describe(self) -> str:
        if self.resumed:
            return f"resumed from {self.checkpoint} (step {self.step}){': ' + self.reason if self.reason else ''}"
        return f"{self.action} at step 0: {self.reason}"

    def tags(self) -> dict[str, str]:
        return {"silkfire.resume": self.action, "silkfire.resume_reason": self.reason[:4900] or "-",
                "silkfire.resumed_from": str(self.step), "silkfire.fingerprint": self.digest}


def read_state(checkpoints: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((checkpoints / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def decide(checkpoints: Path, current: Mapping[str, Any], mode: Any, found: Sequence[Path]) -> ResumeDecision:
    """What to do with the complete checkpoints ``found`` (oldest first) under ``checkpoints``."""
    mode = resume_mode(mode)
    digest = str(current["digest"])
    if not found:
        return ResumeDecision("fresh", f"no checkpoint under {checkpoints}", None, 0, digest)
    last = found[-1]
    step = checkpoint_step(last)
    if mode == "false":
        return ResumeDecision("restarted", f"resume: false; {len(found)} checkpoint(s) up to step {step} removed",
                              None, 0, digest)
    saved = read_state(checkpoints)
    if saved is None:
        if mode == "true":
            return ResumeDecision("resumed", f"resume: true, although {checkpoints} has no {STATE_FILE} (what the "
                                  "checkpoints were trained on is not known)", last, step, digest)
        return ResumeDecision("restarted", f"the checkpoints under {checkpoints} carry no {STATE_FILE}: what they "
                              "were trained on is not known; removed (resume: true would continue them)",
                              None, 0, digest)
    changed = differences(saved, current)
    if changed:
        if mode == "true":
            raise ValueError(f"cannot resume from {last}: it was trained on other settings/inputs "
                             f"({'; '.join(changed)}); set resume: auto (or false) to start over")
        return ResumeDecision("restarted", f"checkpoints up to step {step} were trained on other settings/inputs "
                              f"({'; '.join(changed)}); removed", None, 0, digest)
    return ResumeDecision("resumed", "" if mode == "auto" else "resume: true", last, step, digest)


def checkpoint_step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[-1])


def numbered_checkpoints(checkpoints: Path) -> list[Path]:
    """Every ``checkpoint-<step>`` folder, oldest first (complete or not)."""
    if not checkpoints.is_dir():
        return []
    found = [p for p in checkpoints.iterdir()
             if p.is_dir() and p.name.startswith("checkpoint-") and p.name.rsplit("-", 1)[-1].isdigit()]
    return sorted(found, key=checkpoint_step)


def complete_checkpoints(checkpoints: Path) -> list[Path]:
    """Checkpoints whose ``trainer_state.json`` (written last, by Trainer and by train_dpo) reads back."""
    complete = []
    for path in numbered_checkpoints(checkpoints):
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # killed while saving
        complete.append(path)
    return complete


def prepare(checkpoints: Path, decision: ResumeDecision, current: Mapping[str, Any],
            clear: Iterable[Path] = ()) -> None:
    """Act on the decision (main process only): remove checkpoints that will not be continued (and any checkpoint
    newer than the resumed one: a save cut short), remove ``clear`` (outputs the run rewrites), then write this
    run's fingerprint next to the checkpoints."""
    if decision.resumed:
        assert decision.checkpoint is not None
        for path in numbered_checkpoints(checkpoints):
            if checkpoint_step(path) > decision.step:
                shutil.rmtree(path)
        for tmp in checkpoints.glob("checkpoint-*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True)
    elif checkpoints.exists():
        shutil.rmtree(checkpoints)
    for path in clear:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    checkpoints.mkdir(parents=True, exist_ok=True)
    state = {key: current[key] for key in ("digest", "config", "inputs")}
    tmp = checkpoints / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(checkpoints / STATE_FILE)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def record(decision: ResumeDecision, what: str) -> None:
    """Print the decision and set it as tags of the active MLflow run (if any; main process only)."""
    if not is_main_process():
        return
    print(f"{what}: {decision.describe()}", flush=True)
    if "mlflow" in sys.modules:  # never import MLflow just for this: a run is active only where it is loaded
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.set_tags(decision.tags())
