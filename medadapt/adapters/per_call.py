"""Which LoRA adapters serve the call running now: call-local state, never shared module state.

peft decides which adapters a LoRA layer applies from state on the layer itself (its active
adapters, its disabled flag), and a per-row batch used to need hooks or a swapped ``forward`` on
the shared modules. Both are global to every thread using the model, so two concurrent calls
served each other's adapters. Here a call states what it wants in a :class:`contextvars.ContextVar`
(:func:`serving`), which is private to the thread (and asyncio task) running it, and every LoRA
layer of a bank carries one dispatching ``forward``, installed once when the bank indexes its
layers (:func:`install`) and never changed by a call. It reads the current :class:`CallAdapters`:

* ``rows is None``: the adapters ``names`` (summed, as peft sums active adapters) on every row, or
  the frozen base when ``names`` is empty; computed from the layer's own tensors (peft's formula),
  so nothing on the layer is switched;
* ``rows`` given: one forward per layer chosen for this call (gathered per-row LoRA, see
  :mod:`.gathered`), looked up by layer.

Outside any call (a user calling the peft model directly) the layer runs peft's own ``forward``.
Layer types without a stateless formula here (peft's Embedding, Conv and other LoRA layer types,
merged weights) run peft's ``forward`` under a lock of their own while their active adapters are
set for that one forward (:func:`peft_state`): the only shared state left, guarded narrowly.
"""

from __future__ import annotations

import threading
import types
import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn


@dataclass(frozen=True)
class CallAdapters:
    """What the current call asks of the LoRA layers in ``layer_ids`` (see the module docstring)."""

    layer_ids: frozenset[int]
    names: tuple[str, ...] = ()
    rows: tuple[str, ...] | None = None
    forwards: dict[int, Callable[..., torch.Tensor]] = field(default_factory=dict)


_CURRENT: ContextVar[CallAdapters | None] = ContextVar("medadapt_call_adapters", default=None)


@contextmanager
def serving(call: CallAdapters) -> Iterator[CallAdapters]:
    """Run the body with ``call`` as this thread's LoRA assignment (nested calls restore the outer one)."""
    token = _CURRENT.set(call)
    try:
        yield call
    finally:
        _CURRENT.reset(token)


def current() -> CallAdapters | None:
    """The assignment of the call running in this thread, if any."""
    return _CURRENT.get()


def _dispatch(layer: LoraLayer, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    call = _CURRENT.get()
    if call is None or id(layer) not in call.layer_ids:
        return type(layer).forward(layer, x, *args, **kwargs)
    if call.rows is not None:
        return call.forwards[id(layer)](x, *args, **kwargs)
    if type(layer) is LoraLinear and not layer.merged:
        return uniform_linear(layer, call.names, x, *args, **kwargs)
    with peft_state(layer, list(call.names)):
        return type(layer).forward(layer, x, *args, **kwargs)


def install(layer: LoraLayer) -> None:
    """Give ``layer`` the dispatching ``forward`` (once; a no-op when it has it)."""
    current_forward = layer.__dict__.get("forward")
    if current_forward is not None and getattr(current_forward, "__func__", None) is _dispatch:
        return
    layer.forward = types.MethodType(_dispatch, layer)


def has_dispatch(module: nn.Module) -> bool:
    """Whether ``module`` carries the dispatching ``forward``."""
    return getattr(module.__dict__.get("forward"), "__func__", None) is _dispatch


def uniform_linear(layer: LoraLinear, names: Sequence[str], x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """peft's LoRA Linear forward with ``names`` as the active adapters, read from no layer state."""
    result = layer.base_layer(x, *args, **kwargs)
    dtype = result.dtype
    for name in names:
        if name not in layer.lora_A:
            continue
        lora_A, lora_B = layer.lora_A[name], layer.lora_B[name]
        if x.dtype != lora_A.weight.dtype:
            x = x.to(lora_A.weight.dtype)
        if name in layer.lora_variant:  # DoRA and the like: the variant's own (stateless) forward
            result = layer.lora_variant[name].forward(layer, active_adapter=name, x=x, result=result)
        else:
            result = result + lora_B(lora_A(layer.lora_dropout[name](x))) * layer.scaling[name]
    return result.to(dtype)


_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.Lock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _lock_of(layer: nn.Module) -> threading.Lock:
    with _LOCKS_GUARD:
        lock = _LOCKS.get(layer)
        if lock is None:
            lock = _LOCKS[layer] = threading.Lock()
        return lock


@contextmanager
def peft_state(layer: LoraLayer, active: list[str] | None) -> Iterator[None]:
    """Hold ``layer``'s own lock with peft's active adapters set to ``active`` (``[]``: disabled;
    ``None``: enabled, for peft's per-row ``adapter_names`` path), all restored after.

    peft's public switches also toggle ``requires_grad``; it is kept as it was, during and after."""
    with _lock_of(layer):
        grads = [(p, p.requires_grad) for p in layer.parameters()]
        before, enabled = list(layer.active_adapters), not layer.disable_adapters
        try:
            layer.enable_adapters(active != [])
            if active:
                layer.set_adapter(list(active))
            for param, flag in grads:  # the forward sees the caller's trainable set, not peft's
                param.requires_grad_(flag)
            yield
        finally:
            layer.set_adapter(before)
            layer.enable_adapters(enabled)
            for param, flag in grads:
                param.requires_grad_(flag)
