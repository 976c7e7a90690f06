"""LoRA adapters through peft: many named adapters on one frozen base, never a copy of it."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

from ..errors import AdapterError
from .gathered import BASE, GatherCache, MixedReport, mixed_forwards
from .per_call import CallAdapters, install, serving
from .lora_layers import (
    STATE_PREFIX,
    LayerIndex,
    add_to_layers,
    check_tensors,
    copy_into_layers,
    is_plain,
    planned_shapes,
    wrapped_targets,
)


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

    ``trainable`` names the adapters whose parameters receive gradients (re-applied after peft
    injects an adapter, which makes it trainable).

    Which adapters a forward applies is never switched on the shared layers (peft's active
    adapter is left alone): :meth:`activate` and :meth:`mixed` state it for the running call only
    (see :mod:`medadapt.adapters.per_call`), so calls from several threads do not mix.

    Adding or loading an adapter whose targets are already wrapped costs the same whatever the
    number of adapters (see :mod:`medadapt.adapters.lora_layers`); mixed batches gather each row's
    LoRA update in batched ops (see :mod:`medadapt.adapters.gathered`; ``gather_mixed=False``
    keeps peft's per-adapter sub-batches) and ``last_mixed`` reports which path ran.
    """

    def __init__(self, base: nn.Module) -> None:
        self.base = base
        self.peft_model = None
        self.trainable: set[str] = set()
        self._index: LayerIndex | None = None  # LoRA layers by path; rebuilt when peft wraps modules
        self._layer_ids: frozenset[int] = frozenset()
        self.gather = GatherCache()
        self.gather_mixed = True
        self.last_mixed: MixedReport | None = None

    @property
    def last_mixed_path(self) -> str | None:
        """``"gathered"``, ``"peft"``, ``"partial"`` or ``"none"``: the path of the last mixed batch."""
        return self.last_mixed.path if self.last_mixed is not None else None

    def lora_layers(self) -> dict[str, Any]:
        """The peft LoRA layers of the base by module path (relative to the base model)."""
        return dict(self._layers().layers)

    def _layers(self) -> LayerIndex:
        index = self._index
        if index is None:
            index = LayerIndex(self.base)
            for layer in index.layers.values():
                install(layer)  # the call-local dispatching forward, once per layer
            self._layer_ids = frozenset(id(layer) for layer in index.layers.values())
            self._index = index
        return index

    # -- bookkeeping -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        if self.peft_model is None:
            return []
        return list(self.peft_model.peft_config)

    def __contains__(self, name: str) -> bool:
        return self.peft_model is not None and name in self.peft_model.peft_config

    def config(self, name: str) -> LoraConfig:
        return self.peft_model.peft_config[name]

    def add(self, name: str, config: LoraConfig) -> None:
        """Inject a new adapter named ``name`` (its weights start as peft initialises them)."""
        self._add(name, config, initialise=True)

    def _add(self, name: str, config: LoraConfig, initialise: bool) -> None:
        if not isinstance(config, LoraConfig):
            raise AdapterError(f"adapter {name!r}: expected a peft LoraConfig, got {type(config).__name__}.")
        self._check_name(name)
        if name in self:
            raise AdapterError(f"adapter {name!r} already exists; remove it first or pick another name.")
        self.gather.forget(name)
        layers = wrapped_targets(self._layers(), config) if self.peft_model is not None and self.names() else None
        if layers is not None:  # every target already wrapped: touch only those layers (constant time)
            add_to_layers(layers, name, config, initialise=initialise)
            self.peft_model.peft_config[name] = config
            return  # peft's active adapters, and every other adapter's requires_grad, are unchanged
        try:
            if self.peft_model is None:
                self.peft_model = get_peft_model(self.base, config, adapter_name=name)
            else:
                self.peft_model.add_adapter(name, config)
        except ValueError as exc:
            raise AdapterError(f"adapter {name!r}: peft could not inject LoRA into the base model: {exc}") from exc
        finally:
            self._index = None  # peft may have wrapped new modules
        self._apply_trainable()

    def load(self, name: str, config: LoraConfig, weights: dict[str, torch.Tensor]) -> None:
        """Add adapter ``name`` from a stage's config and peft-format weights, strictly.

        The weights must be exactly this adapter's LoRA tensors for the declared targets and rank:
        any other key (a base weight, another adapter's tensor, ``logit_scale``) or a wrong shape
        raises :class:`AdapterError` naming it, and the model is left as it was (checked before
        anything is injected where the config allows, else the injected adapter is removed again).
        """
        if not isinstance(config, LoraConfig):
            raise AdapterError(f"adapter {name!r}: expected a peft LoraConfig, got {type(config).__name__}.")
        first = self.peft_model is None or not self.names()
        planned = planned_shapes(self._layers(), self.base, config)
        if planned is not None:
            check_tensors(name, config, weights, planned)
        self._add(name, config, initialise=False)
        try:
            self.load_state_dict(name, weights)
        except Exception:
            self._undo_add(name, first)
            raise

    def _undo_add(self, name: str, first: bool) -> None:
        """Remove a just-added adapter; when it was the first, unwrap the base again (model as before)."""
        if first and self.names() == [name]:
            self.peft_model.base_model.unload()
            self.peft_model = None
            self._index = None
            self.gather.forget()
        else:
            self.remove(name)

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
        self.gather.forget(name)
        try:
            self.peft_model.add_weighted_adapter(list(sources), list(weights), name, combination_type=combination_type, **kwargs)
        except (ValueError, TypeError, RuntimeError) as exc:
            if name in self:
                self.remove(name)
            raise AdapterError(f"peft could not merge {list(sources)} into {name!r} with {combination_type!r}: {exc}") from exc
        finally:
            self._index = None
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
        self.gather.forget(name)
        self.trainable.discard(name)

    def parameters(self, name: str) -> list[nn.Parameter]:
        """The parameters that belong to adapter ``name`` (peft keys them ``...lora_A.<name>.weight``),
        found in the LoRA layers only (not a walk over every adapter's parameters)."""
        if name not in self:
            return []
        out: list[nn.Parameter] = []  # LoRA layers in module order, each in its containers' order (= named_parameters)
        for layer in self._layers().layers.values():
            for attr in dict.fromkeys(layer.adapter_layer_names):  # (DoRA appends its name a second time)
                container = getattr(layer, attr, None)
                if isinstance(container, (nn.ModuleDict, nn.ParameterDict)) and name in container:
                    item = container[name]
                    out.extend([item] if isinstance(item, nn.Parameter) else item.parameters())
        return out

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
        """Copy peft-format weights into existing adapter ``name``, strictly (see :meth:`load`).

        Every key and shape is checked before any tensor is written.
        """
        config = self.config(name)
        layers = self._adapter_layers(name, config)
        if layers is not None:  # plain LoRA Linear layers: expected keys from those layers, direct copies
            expected = {}
            for path, layer in layers.items():
                expected[f"{STATE_PREFIX}{path}.lora_A.weight"] = tuple(layer.lora_A[name].weight.shape)
                expected[f"{STATE_PREFIX}{path}.lora_B.weight"] = tuple(layer.lora_B[name].weight.shape)
            check_tensors(name, config, state, expected)
            copy_into_layers(layers, name, state)
        else:  # other layer types / variants: peft's own key mapping, checked against its state dict
            check_tensors(name, config, state, {k: tuple(v.shape) for k, v in self.state_dict(name).items()})
            set_peft_model_state_dict(self.peft_model, state, adapter_name=name)
        self.gather.forget(name)

    def _adapter_layers(self, name: str, config: LoraConfig) -> dict[str, LoraLinear] | None:
        """The LoRA Linear layers holding plain adapter ``name`` (None: not plain, or other layer types)."""
        if not is_plain(config):
            return None
        layers = {p: layer for p, layer in self._layers().layers.items() if name in layer.lora_A}
        if not layers or any(type(layer) is not LoraLinear or name in layer.lora_variant for layer in layers.values()):
            return None
        return layers

    # -- activation --------------------------------------------------------------------------------
    @contextmanager
    def activate(self, names: str | Sequence[str] | None) -> Iterator[None]:
        """Run the body with adapter ``names`` on every row (several are summed, as peft does), or none.

        Call-local: other threads' calls are not affected (see :mod:`medadapt.adapters.per_call`)."""
        if names is None:
            names = ()
        elif isinstance(names, str):
            names = (names,)
        if self.peft_model is None:
            yield
            return
        self._layers()
        with serving(CallAdapters(self._layer_ids, names=tuple(names))):
            yield

    @contextmanager
    def mixed(self, adapter_names: Sequence[str], gather: bool | None = None) -> Iterator[MixedReport]:
        """Run the body with one adapter per batch row (``BASE`` for none); yields a :class:`MixedReport`.

        LoRA Linear layers gather each row's update in batched ops (``gather``: default
        ``self.gather_mixed``); other layers, or all with ``gather=False``, take peft's per-row
        ``adapter_names`` path. Works for any input with a leading batch dimension (``(N, T, d)``
        sequences and one-token decoding steps included) as long as it keeps ``len(adapter_names)`` rows.
        Call-local, like :meth:`activate`.
        """
        names = list(adapter_names)
        if self.peft_model is None:
            self.last_mixed = MixedReport(path="none")
            yield self.last_mixed
            return
        layers = self._layers().layers
        forwards, report = mixed_forwards(layers, names, self.gather, self.gather_mixed if gather is None else gather)
        self.last_mixed = report
        with serving(CallAdapters(self._layer_ids, rows=tuple(names), forwards=forwards)):
            yield report
