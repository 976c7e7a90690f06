"""What crosses the network: adapter tensors only, named ``<adapter>/<peft tensor name>``.

Under ``fedavg`` every tensor of the adapters being trained travels (LoRA A and B, prompt vectors);
under ``ffa_lora`` the LoRA A matrices stay frozen at their shared initialisation and only B (and
prompt vectors) travel. Nothing else (base weights, images, labels, rehearsal memory) is ever put
into a message: :func:`allowed_names` is the complete list a site may send.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from ..errors import FederationError
from ..model import ContinualVLM

SEP = "/"


def travels(key: str, aggregation: str) -> bool:
    """Whether tensor ``key`` of an adapter is exchanged under ``aggregation``."""
    return not (aggregation == "ffa_lora" and ".lora_A." in key)


def wire_tensors(model: ContinualVLM, adapters: list[str], aggregation: str = "fedavg", everything: bool = False) -> dict[str, np.ndarray]:
    """``{"<adapter>/<tensor>": float32 array}`` of ``adapters`` (only what travels, unless ``everything``)."""
    out: dict[str, np.ndarray] = {}
    for name in adapters:
        for key, tensor in model.adapter_state_dict(name).items():
            if everything or travels(key, aggregation):
                out[f"{name}{SEP}{key}"] = tensor.detach().to("cpu", torch.float32).numpy().copy()
    return out


def allowed_names(model: ContinualVLM, adapters: list[str], aggregation: str, everything: bool = False) -> dict[str, tuple[int, ...]]:
    """The names (and shapes) a message about ``adapters`` may carry: nothing else is accepted or sent."""
    return {k: tuple(v.shape) for k, v in wire_tensors(model, adapters, aggregation, everything).items()}


def load_wire(model: ContinualVLM, tensors: Mapping[str, np.ndarray]) -> None:
    """Load received tensors into the adapters they name; tensors not received keep their values."""
    grouped: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        adapter, sep, name = key.partition(SEP)
        if not sep or not model.has_stage(adapter):
            raise FederationError(f"received tensor {key!r} names no adapter of this model ({model.adapter_names()}).")
        grouped.setdefault(adapter, {})[name] = value
    for adapter, values in grouped.items():
        current = model.adapter_state_dict(adapter)
        unknown = sorted(set(values) - set(current))
        if unknown:
            raise FederationError(f"received tensors {unknown[:3]} are not part of adapter {adapter!r}.")
        merged = {}
        for key, tensor in current.items():
            if key in values:
                if tuple(values[key].shape) != tuple(tensor.shape):
                    raise FederationError(f"received tensor {adapter}/{key} has shape {tuple(values[key].shape)}, expected {tuple(tensor.shape)}.")
                merged[key] = torch.from_numpy(np.ascontiguousarray(values[key])).to(tensor.dtype)
            else:
                merged[key] = tensor.detach().clone()
        model.load_adapter_weights(adapter, merged)


def nbytes(tensors: Mapping[str, np.ndarray]) -> int:
    """Bytes of tensor data in a payload."""
    return int(sum(np.asarray(v).nbytes for v in tensors.values()))
