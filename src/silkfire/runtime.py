"""One device and precision policy for every stage that loads a model (conf/runtime/default.yaml: ``runtime``).

    runtime:
      device: auto                  # auto | cpu | cuda | cuda:N
      dtype: auto                   # auto | float32 | bfloat16 | float16
      gradient_checkpointing: false

- **device**: ``auto`` is the GPU when there is one (``cuda:<LOCAL_RANK>`` under ``accelerate launch``/torchrun,
  else ``cuda:0``), otherwise the CPU. ``cuda`` / ``cuda:N`` on a machine without that GPU is a
  :class:`RuntimeConfigError` when the config is composed or a stage starts (:func:`check`), never a crash deep
  in a stage.
- **dtype** is the *compute* precision. ``auto``: bfloat16 on a GPU that supports it, float32 otherwise.
  Inference (evaluation, policies, FIRE students/teachers) loads the weights in it. Training keeps **float32
  master weights** and runs forward/backward under ``torch.autocast`` in bfloat16 (Trainer's ``bf16=True`` for
  SFT, :meth:`Runtime.autocast` in the DPO loop); the optimizer updates float32 weights, so a step of lr 2e-5
  is never rounded away (bf16 weights lose updates below ~0.4% of their size). float16 is offered for inference
  only (training in it would need loss scaling); DeepSpeed keeps its own fp32 master copy (docs/scaling.md).
- **gradient_checkpointing** recomputes activations in the backward pass (less memory, ~30% more compute).
- Batch sizes stay per stage (``train.batch_size``, ``silkie.dpo.batch_size``, ``eval.batch_size``, ...).
  A CUDA out-of-memory error inside :func:`oom_hint` is re-raised as :class:`OutOfMemory` naming the stage's
  batch-size key and the other knobs to turn.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")
DTYPE_CHOICES = ("auto", *DTYPES)
DEVICE_CHOICES = "auto | cpu | cuda | cuda:N"
KEYS = ("device", "dtype", "gradient_checkpointing")
_DEVICE = re.compile(r"^(auto|cpu|cuda(?::(\d+))?)$")


class RuntimeConfigError(ValueError):
    """The runtime settings cannot work on this machine (or are not valid); the message says what to set."""


class OutOfMemory(RuntimeError):
    """CUDA ran out of memory; the message names the settings to turn (the original error is the cause)."""


@dataclass(frozen=True)
class RuntimeConfig:
    """The ``runtime`` keys as written (``auto`` not yet resolved)."""

    device: str = "auto"
    dtype: str = "auto"
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", str(self.device).strip().lower())
        object.__setattr__(self, "dtype", str(self.dtype).strip().lower())
        if not _DEVICE.match(self.device):
            raise RuntimeConfigError(f"runtime.device must be {DEVICE_CHOICES}, got {self.device!r}")
        if self.dtype not in DTYPE_CHOICES:
            raise RuntimeConfigError(f"runtime.dtype must be one of {list(DTYPE_CHOICES)}, got {self.dtype!r}")
        if not isinstance(self.gradient_checkpointing, bool):
            raise RuntimeConfigError(
                f"runtime.gradient_checkpointing must be true or false, got {self.gradient_checkpointing!r}")

    @classmethod
    def from_mapping(cls, cfg: Any) -> RuntimeConfig:
        """From the ``runtime`` mapping (a dict or DictConfig; None = the defaults)."""
        from silkfire.models.config import to_plain_mapping

        values = to_plain_mapping(cfg, "runtime config")
        unknown = sorted(set(values) - set(KEYS))
        if unknown:
            raise RuntimeConfigError(f"runtime: unknown key(s) {unknown}; keys are {list(KEYS)}")
        return cls(**values)

    @classmethod
    def of(cls, cfg: Any) -> RuntimeConfig:
        """From a whole config (its ``runtime`` block; defaults when it has none) or the block itself."""
        from silkfire.models.config import to_plain_mapping

        values = to_plain_mapping(cfg, "config")
        if "runtime" in values:
            return cls.from_mapping(values["runtime"])
        return cls.from_mapping(values if set(values) <= set(KEYS) else None)


@dataclass(frozen=True)
class Runtime:
    """Resolved settings: a concrete device (``cpu`` | ``cuda:N``) and compute dtype."""

    device: str = "cpu"
    dtype: str = "float32"
    gradient_checkpointing: bool = False

    @property
    def device_type(self) -> str:
        return self.device.split(":", 1)[0]

    @property
    def is_cuda(self) -> bool:
        return self.device_type == "cuda"

    def torch_device(self) -> Any:
        import torch

        return torch.device(self.device)

    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)

    @property
    def mixed_precision(self) -> str:
        """accelerate's name for the training precision (``no`` | ``bf16`` | ``fp16``)."""
        return {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}[self.dtype]

    def check_training(self, what: str = "training") -> None:
        """Training keeps float32 master weights under bf16 autocast; float16 would need loss scaling."""
        if self.dtype == "float16":
            raise RuntimeConfigError(
                f"{what}: runtime.dtype=float16 is for inference only (training would need loss scaling); train "
                "with runtime.dtype=bfloat16 (float32 master weights, bf16 autocast) or float32")

    def autocast(self) -> Any:
        """Forward passes of training (and its reference/eval passes): bf16 autocast, or nothing in float32."""
        if self.dtype == "float32":
            return nullcontext()
        import torch

        return torch.autocast(device_type=self.device_type, dtype=self.torch_dtype())

    def describe(self) -> dict[str, Any]:
        return {"device": self.device, "dtype": self.dtype, "gradient_checkpointing": self.gradient_checkpointing}


def cuda_device_count() -> int:
    """GPUs torch can use here (0 on a CPU-only build or a machine without one)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _bf16_supported(index: int) -> bool:
    import torch

    major, _ = torch.cuda.get_device_capability(index)
    return major >= 8  # Ampere and later


def _no_gpu_reason() -> str:
    import torch

    if not torch.version.cuda:
        return f"torch {torch.__version__} is a CPU-only build"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU (CUDA_VISIBLE_DEVICES=" \
           f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})"


def resolve(device: str = "auto", dtype: str = "auto", gradient_checkpointing: bool = False, *,
            cuda_count: int | None = None, bf16_supported: bool | None = None) -> Runtime:
    """The concrete device and dtype for this process; :class:`RuntimeConfigError` when they cannot work here.

    ``cuda_count`` / ``bf16_supported`` stand in for the machine's answers (tests)."""
    settings = RuntimeConfig(device=device, dtype=dtype, gradient_checkpointing=gradient_checkpointing)
    requested = settings.device
    count = cuda_device_count() if cuda_count is None and requested != "cpu" else (cuda_count or 0)
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if requested == "cpu" or (requested == "auto" and count == 0):
        resolved = "cpu"
    elif requested in ("auto", "cuda"):
        if count == 0:
            raise RuntimeConfigError(
                f"runtime.device={requested} but this machine has no CUDA GPU ({_no_gpu_reason()}): set "
                "runtime.device=auto (the GPU when there is one, else the CPU) or runtime.device=cpu")
        resolved = f"cuda:{local_rank if local_rank < count else 0}"
    else:
        index = int(requested.split(":", 1)[1])
        if index >= count:
            have = f"only {count} GPU(s) (cuda:0..cuda:{count - 1})" if count else f"no GPU ({_no_gpu_reason()})"
            raise RuntimeConfigError(f"runtime.device={requested} but this machine has {have}: set "
                                     "runtime.device=auto, cuda (the first/the launcher's GPU) or cpu")
        resolved = requested
    wanted = settings.dtype
    on_gpu = resolved != "cpu"
    if on_gpu and wanted in ("auto", "bfloat16"):
        bf16 = _bf16_supported(int(resolved.split(":")[1])) if bf16_supported is None else bf16_supported
        if wanted == "bfloat16" and not bf16:
            raise RuntimeConfigError(
                f"runtime.dtype=bfloat16 but {resolved} has no bf16 support (compute capability < 8.0): set "
                "runtime.dtype=float32 (or float16 for inference only)")
        resolved_dtype = "bfloat16" if bf16 else "float32"
    elif wanted == "auto":
        resolved_dtype = "float32"
    else:
        resolved_dtype = wanted
    if resolved_dtype == "float16" and not on_gpu:
        raise RuntimeConfigError("runtime.dtype=float16 needs a GPU (CPU kernels are missing or slow in it): set "
                                 "runtime.dtype=float32 or bfloat16 on the CPU")
    return Runtime(device=resolved, dtype=resolved_dtype, gradient_checkpointing=settings.gradient_checkpointing)


def from_config(cfg: Any) -> Runtime:
    """Resolve the ``runtime`` block of a config (the whole config, or the block itself; missing = defaults)."""
    settings = RuntimeConfig.of(cfg)
    return resolve(settings.device, settings.dtype, settings.gradient_checkpointing)


def check(cfg: Any) -> RuntimeConfig:
    """Validate ``runtime`` when a config is composed or a stage starts; raises :class:`RuntimeConfigError`.

    A GPU is only looked for (torch imported) when the config asks for one, or for float16/bfloat16 on
    ``auto``: ``auto``/``cpu`` configs cost nothing to check."""
    settings = RuntimeConfig.of(cfg)
    if settings.device.startswith("cuda") or (settings.device == "cpu" and settings.dtype == "float16"):
        resolve(settings.device, settings.dtype, settings.gradient_checkpointing)
    return settings


# ---- out of memory -----------------------------------------------------------------------------------------------
def is_out_of_memory(error: BaseException) -> bool:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(error, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(error, RuntimeError) and "CUDA out of memory" in str(error)


def oom_message(what: str, knobs: Mapping[str, Any], error: BaseException, *, training: bool = False,
                runtime: Runtime | None = None, advice: Sequence[str] = ()) -> str:
    first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    where = f" on {runtime.device}" if runtime is not None else ""
    turns = [f"lower {key} (now {value})" for key, value in knobs.items()] + list(advice)
    if training and not (runtime is not None and runtime.gradient_checkpointing):
        turns.append("set runtime.gradient_checkpointing=true (activations recomputed: less memory)")
    if runtime is not None and runtime.dtype == "float32" and runtime.is_cuda:
        turns.append("set runtime.dtype=bfloat16 (half the activation memory)")
    if training:
        turns.append("or shard the model over GPUs (accelerate launch with accelerate/deepspeed_zero*.yaml or "
                     "fsdp.yaml, docs/scaling.md)")
    return f"{what}: CUDA out of memory{where} ({first}). To fit: " + "; ".join(turns)


@contextmanager
def oom_hint(what: str, knobs: Mapping[str, Any], *, training: bool = False, runtime: Runtime | None = None,
             advice: Sequence[str] = ()) -> Iterator[None]:
    """Re-raise CUDA out-of-memory inside the block as :class:`OutOfMemory` naming ``knobs`` (config key ->
    current value, e.g. ``{"eval.batch_size": 64}``) and, for training, gradient checkpointing."""
    try:
        yield
    except OutOfMemory:
        raise
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        import sys

        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise OutOfMemory(oom_message(what, knobs, error, training=training, runtime=runtime,
                                       advice=advice)) from error


def enable_gradient_checkpointing(model: Any) -> None:
    """Activation checkpointing on a transformers model (non-reentrant: works with frozen towers and LoRA)."""
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x; older: gradient_*
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "use_cache"):
        config.use_cache = False


def pin_trainer_device(args: Any, runtime: Runtime) -> None:
    """A single-process transformers Trainer on ``runtime.device`` only.

    Left alone, TrainingArguments takes ``cuda:0`` and wraps the model in ``nn.DataParallel`` over every visible
    GPU; one process trains on one device here (several GPUs: ``accelerate launch``, docs/scaling.md)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or not runtime.is_cuda:
        return
    import torch

    device = runtime.torch_device()
    _ = args.device  # TrainingArguments sets itself up (and selects cuda:0) first
    torch.cuda.set_device(device)
    args.__dict__["_setup_devices"] = device  # the cached_property behind args.device
    args._n_gpu = 1


def peak_memory_bytes(runtime: Runtime) -> int | None:
    """Peak GPU memory allocated by torch on the runtime's device since the last reset (None on the CPU)."""
    if not runtime.is_cuda:
        return None
    import torch

    return int(torch.cuda.max_memory_allocated(runtime.torch_device()))
