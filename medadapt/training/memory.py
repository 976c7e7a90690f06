"""Memory options for training a large frozen base: gradient checkpointing, QLoRA preparation and fp32
adapter master weights.

* :func:`enable_gradient_checkpointing` turns on transformers' own mechanism on the base
  (``use_reentrant=False``, input grads enabled so LoRA layers behind frozen embeddings get gradients).
  medadapt keeps the frozen base in eval mode while training (no base dropout); transformers only
  recomputes a layer in training mode, so :func:`checkpointing_train_mode` flips the ``training`` flag of
  the checkpointed layers alone (their dropout submodules stay in eval mode).
* :func:`prepare_quantized_base` calls peft's ``prepare_model_for_kbit_training`` on a 4/8-bit base before
  any adapter is added (norms and other small weights to fp32, base frozen).
* :func:`fp32_master_weights` keeps trainable adapter weights in float32 when the base is bf16/fp16;
  autocast (``mixed_precision``) then runs the matrix products in half precision. Stage files keep the
  adapter's dtype, float32.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..errors import ConfigError


def _pretrained_modules(base: nn.Module) -> list[Any]:
    """The outermost transformers ``PreTrainedModel`` of ``base`` (or none)."""
    from transformers import PreTrainedModel

    return [base] if isinstance(base, PreTrainedModel) else []


def enable_gradient_checkpointing(model: Any) -> None:
    """Turn on gradient checkpointing on ``model``'s frozen base (a :class:`~medadapt.ContinualVLM`).

    Raises :class:`~medadapt.errors.ConfigError` when the base does not support it.
    """
    base = model.base_model
    found = _pretrained_modules(base)
    if not found or not getattr(found[0], "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"train.gradient_checkpointing: the base {type(base).__name__} does not support gradient checkpointing "
            "(transformers' supports_gradient_checkpointing is False or it is no transformers model). Set "
            "train.gradient_checkpointing: false, or lower train.batch_size and use train.grad_accum_steps instead."
        )
    pretrained = found[0]
    try:
        pretrained.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    except ValueError as exc:  # transformers: "... is not compatible with gradient checkpointing"
        raise ConfigError(f"train.gradient_checkpointing: {exc} Set train.gradient_checkpointing: false.") from exc
    if hasattr(pretrained, "enable_input_require_grads"):
        try:
            pretrained.enable_input_require_grads()
        except (NotImplementedError, AttributeError):  # a base without input embeddings (image towers only)
            pass


def checkpointed_layers(model: Any) -> list[nn.Module]:
    """The base's layers that recompute their activations in backward (empty when checkpointing is off)."""
    return [m for m in model.base_model.modules() if getattr(m, "gradient_checkpointing", False) is True and hasattr(m, "_gradient_checkpointing_func")]


def checkpointing_train_mode(model: Any, training: bool) -> None:
    """Set the ``training`` flag of the checkpointed layers only (transformers recomputes in training mode)."""
    for layer in checkpointed_layers(model):
        layer.training = training


def prepare_quantized_base(model: Any, gradient_checkpointing: bool) -> None:
    """peft's ``prepare_model_for_kbit_training`` on ``model``'s quantized base (call before adding adapters)."""
    from peft import prepare_model_for_kbit_training

    prepare_model_for_kbit_training(
        model.base_model, use_gradient_checkpointing=gradient_checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False}
    )


def fp32_master_weights(params: Sequence[nn.Parameter]) -> None:
    """Keep trainable adapter weights in float32 (a bf16/fp16 base gives half-precision LoRA weights otherwise)."""
    for p in params:
        if p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.float()
