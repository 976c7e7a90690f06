"""Gathered mixed-batch LoRA: every row's LoRA update in a fixed number of batched ops.

In a mixed batch (one adapter per row), peft's ``adapter_names`` path loops over one sub-batch per
adapter in every LoRA layer, so its cost grows with the number of distinct adapters. Here, as in
Punica's BGMV kernel, the A and B matrices of the same-rank adapters of a layer are stacked once
(``(slots, r, in)`` and ``(slots, out, r)``, slot 0 all zeros for rows served by the base), and each
forward gathers one slot per row and runs two batched matmuls::

    delta[n] = scale[n] * (x[n] @ A[slot[n]].T) @ B[slot[n]].T

The work is the same whatever the number of distinct adapters. Inputs only need a leading batch
dimension: ``(N, in)``, ``(N, T, in)`` (token sequences, including one-token KV-cache decoding
steps) or more dimensions between.

The stacks are cached per layer and rank. A slot is refreshed when its adapter's tensors are no
longer the ones copied (the parameter object, its storage pointer and its in-place version
counter are checked for every adapter a batch uses, so a training step, ``load_state_dict`` or
any in-place edit is seen), and :meth:`GatherCache.forget` drops an adapter on add, load, merge
or remove. Layers that cannot be gathered keep peft's path: other layer types (Embedding, Conv),
DoRA and other LoRA variants, ``lora_bias``, active dropout (training mode), adapters of different
ranks in one layer, merged weights. LoRA variants such as DoRA run one sub-batch per adapter
through each variant's own ``forward`` (peft's ``adapter_names`` entry refuses DoRA).

:func:`mixed_forwards` only builds each layer's forward for one call; the call hands them to the
layers through call-local state (:mod:`.per_call`), so nothing on the shared modules changes and
concurrent calls never see each other's rows.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

from ..errors import AdapterError
from .per_call import peft_state

BASE = "__base__"  # peft's name for "no adapter" inside a mixed batch


@dataclass
class MixedReport:
    """Which path a mixed batch took: ``"gathered"``, ``"peft"``, ``"partial"`` (some layers each)
    or ``"none"`` (no LoRA layer, or no row served by a LoRA adapter)."""

    path: str
    gathered_layers: int = 0
    fallback: dict[str, str] = field(default_factory=dict)  # layer path -> why peft's path ran there

    @property
    def reasons(self) -> set[str]:
        return set(self.fallback.values())


class _Slot:
    """Where one adapter's tensors sit in a stack, and the identity of the tensors copied there."""

    __slots__ = ("index", "stamp")

    def __init__(self, index: int, stamp: tuple) -> None:
        self.index = index
        self.stamp = stamp


def _stamp(a: torch.Tensor, b: torch.Tensor, scaling: float) -> tuple:
    """Identity of an adapter's tensors: a new parameter, new storage or any in-place write changes it."""
    return (weakref.ref(a), a.data_ptr(), a._version, weakref.ref(b), b.data_ptr(), b._version, float(scaling))


def _same(stamp: tuple, a: torch.Tensor, b: torch.Tensor, scaling: float) -> bool:
    return (
        stamp[0]() is a and stamp[1] == a.data_ptr() and stamp[2] == a._version
        and stamp[3]() is b and stamp[4] == b.data_ptr() and stamp[5] == b._version and stamp[6] == float(scaling)
    )


class _Stack:
    """The stacked A/B/scale tensors of one layer's adapters of one rank (slot 0: zeros)."""

    def __init__(self, rank: int, in_features: int, out_features: int, like: torch.Tensor) -> None:
        self.rank, self.dtype, self.device = rank, like.dtype, like.device
        self.slots: dict[str, _Slot] = {}
        self.free: list[int] = []
        self.A = torch.zeros(1, rank, in_features, dtype=like.dtype, device=like.device)
        self.B = torch.zeros(1, out_features, rank, dtype=like.dtype, device=like.device)
        self.scale = torch.zeros(1, dtype=like.dtype, device=like.device)
        self.used = 1  # slot 0: zeros (the base)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.A, self.B, self.scale))

    def fits(self, a: torch.Tensor) -> bool:
        return a.dtype == self.dtype and a.device == self.device

    def reserve(self, extra: int) -> None:
        """Room for ``extra`` more adapters: exactly what is asked, or 25% more when growing again."""
        need = self.used + max(0, extra - len(self.free))
        capacity = self.A.shape[0]
        if need > capacity:
            grow = max(need, capacity + capacity // 4) - capacity
            self.A = torch.cat([self.A, self.A.new_zeros(grow, *self.A.shape[1:])])
            self.B = torch.cat([self.B, self.B.new_zeros(grow, *self.B.shape[1:])])
            self.scale = torch.cat([self.scale, self.scale.new_zeros(grow)])

    def _new_index(self) -> int:
        if self.free:
            return self.free.pop()
        self.reserve(1)
        self.used += 1
        return self.used - 1

    def put(self, name: str, a: torch.Tensor, b: torch.Tensor, scaling: float) -> int:
        slot = self.slots.get(name)
        if slot is None:
            slot = self.slots[name] = _Slot(self._new_index(), ())
        with torch.no_grad():
            self.A[slot.index].copy_(a)
            self.B[slot.index].copy_(b)
            self.scale[slot.index] = scaling
        slot.stamp = _stamp(a, b, scaling)
        return slot.index

    def drop(self, name: str) -> None:
        slot = self.slots.pop(name, None)
        if slot is not None:
            with torch.no_grad():
                self.A[slot.index].zero_()
                self.B[slot.index].zero_()
                self.scale[slot.index] = 0
            self.free.append(slot.index)


class GatherCache:
    """Per-layer stacks of adapter tensors for gathered mixed batches (see the module docstring)."""

    def __init__(self) -> None:
        self._stacks: "weakref.WeakKeyDictionary[nn.Module, dict[int, _Stack]]" = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()  # concurrent calls fill the stacks: one at a time (bookkeeping only)

    def forget(self, name: str | None = None) -> None:
        """Drop adapter ``name`` from every stack (all adapters when ``None``)."""
        with self._lock:
            if name is None:
                self._stacks = weakref.WeakKeyDictionary()
                return
            for by_rank in self._stacks.values():
                for stack in by_rank.values():
                    stack.drop(name)

    def nbytes(self) -> int:
        """Bytes held by the stacks (a second copy of the adapters that mixed batches used)."""
        return sum(s.nbytes() for by_rank in self._stacks.values() for s in by_rank.values())

    def slots_for(self, layer: LoraLinear, names: Sequence[str], rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """Stacks of ``layer`` holding current copies of ``names`` (all of rank ``rank``) and their slots.

        A call keeps the tensors returned here for its whole duration: a slot is written in place
        only while no adapter change can run (see :mod:`.gate`), and growing a stack makes new tensors."""
        with self._lock:
            return self._slots_for(layer, names, rank)

    def _slots_for(self, layer: LoraLinear, names: Sequence[str], rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        by_rank = self._stacks.setdefault(layer, {})
        a0 = layer.lora_A[names[0]].weight
        stack = by_rank.get(rank)
        if stack is None or not stack.fits(a0):
            stack = by_rank[rank] = _Stack(rank, layer.in_features, layer.out_features, a0)
        stack.reserve(sum(1 for name in names if name not in stack.slots))
        indices = []
        for name in names:
            a, b, scaling = layer.lora_A[name].weight, layer.lora_B[name].weight, layer.scaling[name]
            slot = stack.slots.get(name)
            if slot is None or not _same(slot.stamp, a, b, scaling):
                if not stack.fits(a) or not stack.fits(b):  # adapters of one layer on several devices/dtypes
                    raise _CannotGather("adapters of this layer differ in dtype or device")
                indices.append(stack.put(name, a, b, scaling))
            else:
                indices.append(slot.index)
        return stack.A, stack.B, stack.scale, indices


class _CannotGather(Exception):
    pass


_VARIANT = "LoRA variant"  # DoRA and the like


def _check_rows(x: torch.Tensor, n_rows: int) -> None:
    if x.shape[0] != n_rows:
        raise AdapterError(
            f"mixed-adapter batch: {n_rows} adapter names were given but a LoRA layer received {x.shape[0]} rows; "
            "give one adapter name per row of the batch (expand them too when the batch is expanded, e.g. beams)."
        )


def _variant_forward(layer: LoraLinear, names: list[str]) -> Callable[..., torch.Tensor]:
    """One sub-batch per adapter, through each LoRA variant's own ``forward`` (DoRA and the like):
    the loop of peft's mixed-batch path, whose ``adapter_names`` entry refuses DoRA."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        if name in layer.lora_A:
            groups.setdefault(name, []).append(i)

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        _check_rows(x, len(names))
        result = layer.base_layer(x, *args, **kwargs)
        dtype = result.dtype
        for name, rows in groups.items():
            index = torch.tensor(rows, device=x.device)
            sub = x.index_select(0, index).to(layer.lora_A[name].weight.dtype)
            if name in layer.lora_variant:
                out = layer.lora_variant[name].forward(layer, active_adapter=name, x=sub, result=result.index_select(0, index))
            else:
                lora = layer.lora_B[name](layer.lora_A[name](layer.lora_dropout[name](sub))) * layer.scaling[name]
                out = result.index_select(0, index) + lora
            result = result.index_copy(0, index, out.to(dtype))
        return result

    return forward


def fallback_reason(layer: LoraLayer, present: Sequence[str]) -> str | None:
    """Why ``layer`` must keep peft's mixed-batch path for adapters ``present`` (None: it can be gathered)."""
    if type(layer) is not LoraLinear:
        return f"layer type {type(layer).__name__} (only peft LoRA Linear layers are gathered)"
    if layer.merged:
        return "merged adapter weights"
    for name in present:
        if name in layer.lora_variant:
            return f"{_VARIANT} {type(layer.lora_variant[name]).__name__}: one sub-batch per adapter"
        if layer.lora_bias.get(name):
            return "lora_bias"
        dropout = layer.lora_dropout[name]
        if dropout.training and isinstance(dropout, nn.Dropout) and dropout.p > 0:
            return "LoRA dropout active (training mode)"
    if len({layer.r[name] for name in present}) > 1:
        return "adapters of different ranks"
    return None


def _needs_grad(layer: LoraLinear, present: Sequence[str]) -> bool:
    return torch.is_grad_enabled() and any(
        layer.lora_A[n].weight.requires_grad or layer.lora_B[n].weight.requires_grad for n in present
    )


def _stacks(layer: LoraLinear, present: Sequence[str], cache: GatherCache) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """Stacked A, B, scale of ``layer`` and the slots of ``present``: cached copies, or, when
    autograd must reach the adapter weights (training through a mixed batch), fresh stacks."""
    if not _needs_grad(layer, present):
        return cache.slots_for(layer, present, layer.r[present[0]])
    a = [layer.lora_A[n].weight for n in present]
    b = [layer.lora_B[n].weight for n in present]
    A = torch.stack([torch.zeros_like(a[0])] + a)
    B = torch.stack([torch.zeros_like(b[0])] + b)
    scale = torch.tensor([0.0] + [layer.scaling[n] for n in present], dtype=A.dtype, device=A.device)
    return A, B, scale, list(range(1, len(present) + 1))


def _base_only(base_layer: nn.Module) -> Callable[..., torch.Tensor]:
    """A forward running only the base layer (called as a module, so its own hooks still run).

    (A plain function: assigning the module itself to ``forward`` would register a submodule.)"""

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return base_layer(x, *args, **kwargs)

    return forward


def _gathered_forward(layer: LoraLinear, A: torch.Tensor, B: torch.Tensor, scale: torch.Tensor, rows: torch.Tensor, n_rows: int) -> Callable[..., torch.Tensor]:
    """A forward for ``layer``: the base layer, plus each row's LoRA update gathered from the stacks."""
    base_layer = layer.base_layer

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        _check_rows(x, n_rows)
        result = base_layer(x, *args, **kwargs)
        a_rows = A.index_select(0, rows)  # (N, r, in)
        b_rows = B.index_select(0, rows)  # (N, out, r)
        xs = x.reshape(n_rows, -1, x.shape[-1]).to(A.dtype)  # (N, T, in): any leading batch layout
        delta = torch.bmm(torch.bmm(xs, a_rows.transpose(1, 2)), b_rows.transpose(1, 2))
        delta = delta * scale.index_select(0, rows).view(n_rows, 1, 1)
        return result + delta.reshape(result.shape).to(result.dtype)

    return forward


def peft_rows(layer: LoraLayer, names: list[str]) -> Callable[..., torch.Tensor]:
    """A forward running peft's own per-row ``adapter_names`` path on ``layer`` (other layer types,
    different ranks, active dropout...), under the layer's own lock (see :func:`.per_call.peft_state`)."""

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        _check_rows(x, len(names))
        with peft_state(layer, None):
            return type(layer).forward(layer, x, *args, adapter_names=names, **kwargs)

    return forward


def mixed_forwards(
    layers: dict[str, LoraLayer], adapter_names: Sequence[str], cache: GatherCache, gather: bool = True
) -> tuple[dict[int, Callable[..., torch.Tensor]], MixedReport]:
    """One forward per LoRA layer (by ``id``) serving one adapter per batch row, and the report.

    Gatherable layers get a gathered forward; variants (DoRA) one sub-batch per adapter; the
    others, or every layer with ``gather=False``, peft's ``adapter_names`` path. Nothing on the
    layers changes: the caller hands the forwards to the call (see :mod:`.per_call`).
    """
    names = list(adapter_names)
    distinct = sorted({n for n in names if n != BASE})
    forwards: dict[int, Callable[..., torch.Tensor]] = {}
    report = MixedReport(path="none")
    for path, layer in layers.items():
        present = [n for n in distinct if n in layer.r]  # (Embedding layers keep theirs in lora_embedding_A)
        reason = fallback_reason(layer, present)
        if not gather and not (reason or "").startswith(_VARIANT):
            reason = "gathering turned off"
        if reason is None and not present:  # no row's adapter is in this layer: every row gets the base layer
            forwards[id(layer)] = _base_only(layer.base_layer)
            continue
        if reason is None:
            try:
                A, B, scale, slots = _stacks(layer, present, cache)
            except _CannotGather as exc:
                reason = str(exc)
        if reason is not None and reason.startswith(_VARIANT):
            forwards[id(layer)] = _variant_forward(layer, names)  # peft's adapter_names check refuses DoRA
            report.fallback[path] = reason
            continue
        if reason is not None:
            forwards[id(layer)] = peft_rows(layer, names)  # also serves rows whose adapter is not in the layer
            if present:
                report.fallback[path] = reason
            continue
        slot_of = dict(zip(present, slots))
        rows = torch.tensor([slot_of.get(n, 0) for n in names], dtype=torch.long, device=A.device)
        forwards[id(layer)] = _gathered_forward(layer, A, B, scale, rows, len(names))
        report.gathered_layers += 1
    if report.gathered_layers and report.fallback:
        report.path = "partial"
    elif report.gathered_layers:
        report.path = "gathered"
    elif report.fallback:
        report.path = "peft"
    return forwards, report
