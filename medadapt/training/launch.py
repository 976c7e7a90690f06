"""What ``accelerate launch`` (its flags, an ``accelerate config`` file, or the ``ACCELERATE_*`` variables
they set) decides for a run, and which of its distributed types medadapt trains under.

The launcher decides mixed precision and gradient accumulation; ``train.mixed_precision`` and
``train.grad_accum_steps`` in the run config override it only when they are given. The resolved values go
into ``results.json`` (``launch``).

Distributed types: one process, and data parallel over processes (``MULTI_CPU``/gloo, ``MULTI_GPU``/DDP and
the other ``MULTI_*`` device types) are supported: the trainable adapters are small, so every process holds
the whole frozen base and the adapter gradients are averaged explicitly. FSDP, DeepSpeed, Megatron-LM and
XLA are refused before anything loads, with what to use instead (see the README's "Large bases" section for
the memory arithmetic behind that decision).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

REFUSED = {
    "DEEPSPEED": ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"),
    "FSDP": ("FSDP", "ACCELERATE_USE_FSDP"),
    "MEGATRON_LM": ("Megatron-LM", "ACCELERATE_USE_MEGATRON_LM"),
    "XLA": ("XLA/TPU", None),
}
INSTEAD = (
    "medadapt trains small adapters on a frozen base, so it runs data parallel: every process holds the whole "
    "base and the adapter gradients are averaged. Use `accelerate launch --multi_gpu` (DDP, or MULTI_CPU on "
    "CPUs) or a single process; for a base that does not fit one card in bf16, load it in 4 bits "
    "(`quantization: 4bit`, QLoRA) and turn on `train.gradient_checkpointing: true` (see the README, "
    "'Large bases: memory arithmetic')."
)


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def check_launch_environment() -> None:
    """Refuse an ``accelerate launch`` set-up medadapt does not train under, before anything is loaded.

    Reads the ``ACCELERATE_USE_*`` variables that ``accelerate launch --use_fsdp/--use_deepspeed/
    --use_megatron_lm`` (or an ``accelerate config`` file choosing them) sets.
    """
    for what, variable in REFUSED.values():
        if variable is not None and _flag(variable):
            raise ConfigError(f"this run was launched with {what} ({variable}=true), which medadapt does not support. {INSTEAD}")


def check_distributed_type(accelerator: Any) -> None:
    """Refuse an accelerator (e.g. one passed in by the caller) whose distributed type medadapt does not support."""
    kind = accelerator.distributed_type
    dist_type = str(getattr(kind, "value", kind))
    if dist_type in REFUSED:
        raise ConfigError(f"the accelerator's distributed type is {REFUSED[dist_type][0]} ({dist_type}), which medadapt does not support. {INSTEAD}")


@dataclass(frozen=True)
class LaunchSettings:
    """The resolved launch decisions: ``mixed_precision`` and ``grad_accum_steps``, and where each came from."""

    mixed_precision: str
    grad_accum_steps: int
    mixed_precision_source: str
    grad_accum_source: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def resolve_launch(train: Any) -> LaunchSettings:
    """Mixed precision and gradient accumulation for ``train`` (a ``TrainSettings``): the run config's value
    when given, else the launcher's (``ACCELERATE_MIXED_PRECISION`` / ``ACCELERATE_GRADIENT_ACCUMULATION_STEPS``),
    else ``"no"`` and 1."""
    if train.mixed_precision is not None:
        precision, precision_source = train.mixed_precision, "run config (train.mixed_precision)"
    elif os.environ.get("ACCELERATE_MIXED_PRECISION"):
        precision, precision_source = os.environ["ACCELERATE_MIXED_PRECISION"].strip().lower(), "accelerate (ACCELERATE_MIXED_PRECISION)"
    else:
        precision, precision_source = "no", "default"
    if precision not in ("no", "fp16", "bf16"):
        raise ConfigError(f"mixed precision {precision!r} from the {precision_source} is not supported; use no, fp16 or bf16.")
    if train.grad_accum_steps is not None:
        steps, steps_source = train.grad_accum_steps, "run config (train.grad_accum_steps)"
    elif os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS"):
        raw = os.environ["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"].strip()
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(f"ACCELERATE_GRADIENT_ACCUMULATION_STEPS={raw!r} must be an integer >= 1.")
        steps, steps_source = int(raw), "accelerate (ACCELERATE_GRADIENT_ACCUMULATION_STEPS)"
    else:
        steps, steps_source = 1, "default"
    return LaunchSettings(precision, steps, precision_source, steps_source)
