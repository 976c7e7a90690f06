"""LoRA adapters through peft: many named adapters on one frozen base, never a copy of it."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from torch import nn

from ..errors import AdapterError

BASE = "__base__"  # peft's name for "no adapter" inside a mixed batch
_UNKNOWN = object()  # peft's active/enabled state is not known (right after add/remove): always switch


def lora_owner(param_name: str) -> str | None:
    """The adapter a peft LoRA parameter belongs to: ``...q_proj.lora_A.<adapter>.weight`` -> ``<adapter>``.

    Matching on the component right after ``lora_*`` (not on ``.<adapter>.`` anywhere in the name)
    keeps adapters named like a module path part (``0``, ``encoder``, ``weight``) apart.
    """
    parts = param_name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.startswith("lora_"):
            return parts[i + 1]
    return None


def default_lora_config(target_modules: Sequence[str] | str, r: int = 8) -> LoraConfig:
    """The LoRA config used when a domain is added without one: rank 8 on the attention q/v projections."""
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)  # a str is peft's regex
    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=targets, bias="none")


class LoraBank:
    """Holds every LoRA adapter of a model in one peft model wrapped around the frozen base.

    ``trainable`` names the adapters whose parameters receive gradients; peft toggles
    ``requires_grad`` when the active adapter changes, so the bank re-applies it after every switch.
    """

    def __init__(self, base: nn.Module) -> None:
        self.base = base
        self.peft_model = None
        self.trainable: set[str] = set()
        self._active: object = _UNKNOWN

    # -- bookkeeping -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        if self.peft_model is None:
            return []
        return list(self.peft_model.peft_config)

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def config(self, name: str) -> LoraConfig:
        return self.peft_model.peft_config[name]

    def add(self, name: str, config: LoraConfig) -> None:
        """Inject a new adapter named ``name`` (its weights start as peft initialises them)."""
        if not isinstance(config, LoraConfig):
            raise AdapterError(f"adapter {name!r}: expected a peft LoraConfig, got {type(config).__name__}.")
        self._check_name(name)
        try:
            if self.peft_model is None:
                self.peft_model = get_peft_model(self.base, config, adapter_name=name)
            else:
                self.peft_model.add_adapter(name, config)
        except ValueError as exc:
            raise AdapterError(f"adapter {name!r}: peft could not inject LoRA into the base model: {exc}") from exc
        self._active = _UNKNOWN  # peft left its own active adapter enabled
        self._apply_trainable()

    def _check_name(self, name: str) -> None:
        if name.startswith("lora_") or name in self._reserved_names():
            raise AdapterError(
                f"adapter name {name!r} clashes with the parameter names of the base model or of peft "
                f"('...{name}...' or 'lora_*'); peft finds adapters by their name inside parameter names and "
                "would mix them up. Pick another name."
            )

    def add_weighted(self, name: str, sources: Sequence[str], weights: Sequence[float], combination_type: str, **kwargs: Any) -> None:
        """Add ``name`` as peft's ``add_weighted_adapter`` combination of adapters ``sources``."""
        self._check_name(name)
        if name in self:  # peft would silently keep the existing adapter
            raise AdapterError(f"adapter {name!r} already exists; merge into another name.")
        try:
            self.peft_model.add_weighted_adapter(list(sources), list(weights), name, combination_type=combination_type, **kwargs)
        except (ValueError, TypeError, RuntimeError) as exc:
            if name in self:
                self.remove(name)
            raise AdapterError(f"peft could not merge {list(sources)} into {name!r} with {combination_type!r}: {exc}") from exc
        self._active = _UNKNOWN
        self._apply_trainable()

    def _reserved_names(self) -> set[str]:
        """Dotted parts of the base's own parameter names (``encoder``, ``0``, ``q_proj``, ``weight``...).

        The base never changes, so this is computed once (not a scan per added adapter)."""
        cached = getattr(self, "_reserved", None)
        if cached is not None:
            return cached
        reserved = {"weight", "bias", "base_layer"}
        for n, _ in self.base.named_parameters():
            parts = n.split(".")
            cut = next((i for i, part in enumerate(parts) if part.startswith("lora_")), len(parts))
            reserved.update(parts[:cut])
        self._reserved: set[str] = reserved
        return reserved

    def remove(self, name: str) -> None:
        self.peft_model.delete_adapter(name)
        self.trainable.discard(name)
        self._active = _UNKNOWN

    def parameters(self, name: str) -> list[nn.Parameter]:
        """The parameters that belong to adapter ``name`` (peft keys them ``...lora_A.<name>.weight``)."""
        if self.peft_model is None:
            return []
        return [p for n, p in self.base.named_parameters() if lora_owner(n) == name]

    def _apply_trainable(self) -> None:
        for n, p in self.base.named_parameters():
            owner = lora_owner(n)
            if owner is not None:
                p.requires_grad_(owner in self.trainable)

    def set_trainable(self, names: Sequence[str]) -> None:
        self.trainable = {n for n in names if n in self}
        self._apply_trainable()

    # -- weights -----------------------------------------------------------------------------------
    def state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """peft-format weights of one adapter, with the adapter name stripped from the keys."""
        # save_embedding_layers=False: the base (and its vocabulary) is frozen, and "auto" makes peft
        # look the base's config.json up on the Hub (a network call on every save)
        state = get_peft_model_state_dict(self.peft_model, adapter_name=name, save_embedding_layers=False)
        return {k: v.detach().contiguous() for k, v in state.items()}

    def load_state_dict(self, name: str, state: dict[str, torch.Tensor]) -> None:
        result = set_peft_model_state_dict(self.peft_model, state, adapter_name=name)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise AdapterError(f"adapter {name!r}: weights hold keys this model does not have: {unexpected[:3]}...")
        config = self.config(name)
        if (
            getattr(config, "bias", "none") == "none"
            and not getattr(config, "modules_to_save", None)
            and getattr(config, "trainable_token_indices", None) is None
            and not any(f".{name}." in k for k in getattr(result, "missing_keys", None) or [])
        ):
            return  # every tensor of the adapter was loaded: skip re-gathering the whole model's state dict
        expected = set(self.state_dict(name))
        missing = sorted(expected - set(state))
        if missing:
            raise AdapterError(f"adapter {name!r}: weights miss {len(missing)} tensors, e.g. {missing[:3]}.")

    # -- activation --------------------------------------------------------------------------------
    def _switch(self, target: object) -> None:
        if self.peft_model is None or target == self._active:
            return
        lora_model = self.peft_model.base_model
        if target is None:
            lora_model.disable_adapter_layers()
        else:
            if not isinstance(self._active, (str, tuple)):  # disabled, or unknown
                lora_model.enable_adapter_layers()
            lora_model.set_adapter(list(target) if isinstance(target, tuple) else target)
        self._active = target
        self._apply_trainable()

    @contextmanager
    def activate(self, names: str | Sequence[str] | None) -> Iterator[None]:
        """Run the body with adapter ``names`` active (several are summed, as peft does), or none."""
        if isinstance(names, (list, tuple)):
            names = tuple(names) if len(names) > 1 else names[0]
        self._switch(names)
        yield

    @contextmanager
    def mixed(self, adapter_names: Sequence[str]) -> Iterator[None]:
        """Run the body with one adapter per batch row (``BASE`` for none) via peft's mixed-batch path."""
        if self.peft_model is None:
            yield
            return
        names = sorted({n for n in adapter_names if n != BASE})
        if names:
            self._switch(tuple(names) if len(names) > 1 else names[0])
        handles = []

        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
            kwargs["adapter_names"] = list(adapter_names)
            return args, kwargs

        for module in self.base.modules():
            if isinstance(module, LoraLayer):
                handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
