"""A full hash of the base model's weights, for saves that hold the base themselves.

The base fingerprint (:func:`medadapt.backbones.weights_fingerprint`) samples a few values of a few
tensors: enough to tell two different bases apart, cheap for a multi-GB model given by the user,
but blind to a change in an unsampled tensor. When medadapt writes the base into a save (``base/``),
it also records ``base.weights_sha256``, a sha256 over every base tensor, and a load checks it in
full, so a base file edited together with its file hash is still refused.
"""

from __future__ import annotations

import hashlib
import weakref
from typing import Any

import torch

from ..errors import BaseMismatchError

_CACHE: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def base_weights_sha256(backbone: Any) -> str:
    """sha256 over every tensor of the frozen base (name, dtype, shape and bytes; adapter tensors excluded).

    peft's ``base_layer`` wrapping is undone in the names, so the value is the same before and after
    adapters are added. Cached per model: base weights never change.
    """
    model = backbone.model
    if model in _CACHE:
        return _CACHE[model]
    digest = hashlib.sha256()
    state = model.state_dict()
    items = sorted((k.replace(".base_layer.", "."), v) for k, v in state.items() if "lora_" not in k)
    for key, value in items:
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    _CACHE[model] = digest.hexdigest()
    return _CACHE[model]


def check_base_weights(backbone: Any, base_info: dict[str, Any], where: str) -> None:
    """Refuse a base whose full weight hash differs from the ``weights_sha256`` a save recorded."""
    expected = base_info.get("weights_sha256")
    if not expected:
        return
    actual = base_weights_sha256(backbone)
    if actual != expected:
        raise BaseMismatchError(
            f"{where}: the base model's weights (sha256 over all tensors {actual[:12]}...) are not the ones this save "
            f"was made with ({expected[:12]}...): a base tensor was changed. Not loading it."
        )
