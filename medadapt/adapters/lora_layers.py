"""The LoRA layers of a peft-wrapped base: finding them, adding an adapter to them in constant time,
and checking that a stage's tensors are exactly that adapter's LoRA tensors.

peft's ``add_adapter`` walks every module of the model (and every adapter's submodules inside
each LoRA layer), and ``set_peft_model_state_dict`` builds the whole model's state dict, so the
N-th adapter costs O(N). :class:`LayerIndex` walks the base once, never entering a LoRA layer,
and :func:`add_to_layers` calls peft's own ``LoraLayer.update_layer`` on the already-wrapped target
layers only: loading a stage then touches just that stage's modules and tensors.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from torch import nn

from ..errors import AdapterError

STATE_PREFIX = "base_model.model."  # peft's key prefix in adapter_model.safetensors
_UPCAST = (torch.float16, torch.bfloat16)  # peft keeps adapter weights in float32 on half-precision bases


class LayerIndex:
    """Module paths of the base (outside LoRA layers) and the LoRA layers wrapping some of them.

    Built in one walk that does not enter LoRA layers, so its cost does not depend on how many
    adapters they hold. Rebuild it after peft wraps new modules.
    """

    def __init__(self, root: nn.Module) -> None:
        self.paths: list[str] = []
        self.layers: dict[str, LoraLayer] = {}
        self._matches: dict[tuple, list[str]] = {}
        self._walk(root, "")

    def _walk(self, module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            self.paths.append(path)
            if isinstance(child, BaseTunerLayer):
                if isinstance(child, LoraLayer):
                    self.layers[path] = child
                continue
            self._walk(child, path)

    def targets(self, config: LoraConfig) -> list[str]:
        """Paths that ``config`` targets (peft's own matching rule), memoised per target spec."""
        spec = config.target_modules
        key = (
            spec if isinstance(spec, str) else tuple(sorted(spec or ())),
            repr(config.layers_to_transform), repr(config.layers_pattern),
        )
        found = self._matches.get(key)
        if found is None:
            found = self._matches[key] = [p for p in self.paths if check_target_module_exists(config, p)]
        return found


def is_plain(config: Any) -> bool:
    """A vanilla LoRA on Linear layers whose tensors are just ``lora_A``/``lora_B`` of one rank."""
    if not isinstance(config, LoraConfig):
        return False
    init = config.init_lora_weights
    return (
        (isinstance(init, bool) or init == "gaussian")
        and bool(config.target_modules)
        and config.target_modules != "all-linear"
        and not config.rank_pattern
        and not config.alpha_pattern
        and config.bias == "none"
        and not config.lora_bias
        and not config.use_dora
        and not config.modules_to_save
        and not config.exclude_modules
        and config.trainable_token_indices is None
        and not getattr(config, "target_parameters", None)
        and not getattr(config, "ensure_weight_tying", False)
        and not config.layer_replication
    )


def planned_shapes(index: LayerIndex, root: nn.Module, config: LoraConfig) -> dict[str, tuple[int, ...]] | None:
    """``{state key: shape}`` of the tensors a plain ``config`` gives this base, before injecting it.

    ``None`` when that cannot be known without peft injecting the adapter (a non-plain config, or a
    target that is neither an ``nn.Linear`` nor a LoRA Linear layer); the caller then checks after.
    """
    if not is_plain(config):
        return None
    paths = index.targets(config)
    if not paths:
        return None
    r = int(config.r)
    shapes: dict[str, tuple[int, ...]] = {}
    for path in paths:
        module = index.layers.get(path) or root.get_submodule(path)
        if type(module) is LoraLinear:
            in_f, out_f = module.in_features, module.out_features
        elif type(module) is nn.Linear:
            in_f, out_f = module.in_features, module.out_features
        else:
            return None
        shapes[f"{STATE_PREFIX}{path}.lora_A.weight"] = (r, in_f)
        shapes[f"{STATE_PREFIX}{path}.lora_B.weight"] = (out_f, r)
    return shapes


def wrapped_targets(index: LayerIndex, config: LoraConfig) -> dict[str, LoraLinear] | None:
    """The LoRA Linear layers a plain ``config`` targets, when every target is already wrapped
    (so the adapter can be added without peft's whole-model injection); else ``None``."""
    if not is_plain(config):
        return None
    paths = index.targets(config)
    layers = {p: index.layers.get(p) for p in paths}
    if not layers or any(type(layer) is not LoraLinear for layer in layers.values()):
        return None
    first = next(iter(layers.values()))
    if first.resolve_lora_variant(config=config) is not None:  # DoRA and other variants: peft's path
        return None
    return layers  # type: ignore[return-value]


_CONTAINERS = ("lora_A", "lora_B", "lora_dropout", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")


@contextmanager
def _alone(layer: LoraLayer, name: str) -> Iterator[None]:
    """Let ``update_layer`` see only adapter ``name``'s module containers.

    peft's ``update_layer`` ends with ``set_adapter(active adapters)``, which re-toggles
    ``requires_grad`` on every adapter of the layer, and moves the new adapter to the base layer's
    device after scanning every adapter's parameters: both O(adapters), while adding one adapter
    changes no other. With empty containers swapped in, both touch the new adapter only; its
    entries are then moved into the real containers (which keep their place in the module).
    """
    real = {attr: getattr(layer, attr) for attr in _CONTAINERS if isinstance(getattr(layer, attr, None), (nn.ModuleDict, nn.ParameterDict))}
    for attr, container in real.items():
        setattr(layer, attr, type(container)())
    try:
        yield
    finally:
        for attr, container in real.items():
            fresh = getattr(layer, attr)
            setattr(layer, attr, container)
            if name in fresh:
                container[name] = fresh[name]


def add_to_layers(layers: Mapping[str, LoraLinear], name: str, config: LoraConfig, initialise: bool = True) -> None:
    """Add adapter ``name`` to already-wrapped LoRA layers with peft's ``update_layer``; frozen.

    ``initialise=False`` skips peft's weight initialisation (the caller copies weights in next).
    """
    init_config = config if initialise else _copy_with(config, init_lora_weights=False)
    done: list[LoraLinear] = []
    try:
        for path, layer in layers.items():
            done.append(layer)
            with _alone(layer, name):
                layer.update_layer(name, config.r, lora_alpha=config.lora_alpha, config=init_config, target_name=path)
            for sub in (layer.lora_A[name], layer.lora_B[name]):
                if sub.weight.dtype in _UPCAST:
                    sub.float()
                sub.requires_grad_(False)
    except Exception:
        for layer in done:
            layer.delete_adapter(name)
        raise


def _copy_with(config: LoraConfig, **changes: Any) -> LoraConfig:
    import copy

    out = copy.copy(config)
    for k, v in changes.items():
        setattr(out, k, v)
    return out


def copy_into_layers(layers: Mapping[str, LoraLinear], name: str, weights: Mapping[str, torch.Tensor]) -> None:
    """Copy a checked stage's ``lora_A``/``lora_B`` tensors straight into adapter ``name``'s layers."""
    with torch.no_grad():
        for path, layer in layers.items():
            layer.lora_A[name].weight.copy_(weights[f"{STATE_PREFIX}{path}.lora_A.weight"])
            layer.lora_B[name].weight.copy_(weights[f"{STATE_PREFIX}{path}.lora_B.weight"])


def check_tensors(name: str, config: LoraConfig | None, weights: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse weights that are not exactly adapter ``name``'s LoRA tensors of the declared targets and rank.

    A stage may only write its own adapter: any other key (a base weight, another adapter's
    tensor, ``logit_scale``) is refused by name, and so is a tensor whose shape does not match.
    """
    declared = ""
    if config is not None:
        targets = config.target_modules if isinstance(config.target_modules, str) else sorted(config.target_modules or [])
        declared = f" (declared rank r={config.r}, target_modules={targets!r})"
    unexpected = sorted(k for k in weights if k not in expected)
    if unexpected:
        raise AdapterError(
            f"adapter {name!r}: the weights hold {len(unexpected)} tensor(s) that are not this adapter's LoRA "
            f"parameters{declared}, e.g. {unexpected[0]!r}; refused, nothing was loaded. A stage may only write "
            "its own adapter's tensors, never the base model's, another adapter's or logit_scale: the file was "
            "modified, or saved with another adapter config."
        )
    missing = sorted(k for k in expected if k not in weights)
    if missing:
        raise AdapterError(
            f"adapter {name!r}: the weights miss {len(missing)} tensor(s) of its declared targets{declared}, "
            f"e.g. {missing[0]!r}; refused, nothing was loaded."
        )
    for key, tensor in weights.items():
        shape = tuple(getattr(tensor, "shape", ()))
        if shape != tuple(expected[key]):
            raise AdapterError(
                f"adapter {name!r}: tensor {key!r} has shape {list(shape)} but this base and the declared config"
                f"{declared} need {list(expected[key])}; refused, nothing was loaded (rank or targets do not match "
                "the file, or it was made for another base)."
            )
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise AdapterError(f"adapter {name!r}: tensor {key!r} is not a floating-point tensor; refused.")
