"""Memory selection policies for the rehearsal buffer (pure numpy, deterministic per rng).

A policy turns ``(current memory, new stage's labels)`` into the new memory. Memory items
are references ``(domain, index, label)``; a policy never sees images. Add a policy with::

    @register_policy("my_policy")
    class MyPolicy(SelectionPolicy):
        def update(self, memory, domain, labels, capacity, rng, state): ...
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, TypeVar

import numpy as np

from ..errors import RehearsalError

__all__ = [
    "Ref",
    "RehearsalError",
    "SelectionPolicy",
    "register_policy",
    "get_policy",
    "available_policies",
    "ReservoirPolicy",
    "ClassBalancedPolicy",
    "balanced_quotas",
]

#: A memory item: (domain name, sample index in that domain's train split, label).
Ref = tuple[str, int, int]


class SelectionPolicy(ABC):
    """Decides which references stay in a bounded memory."""

    name: str = ""

    @abstractmethod
    def update(
        self,
        memory: list[Ref],
        domain: str,
        labels: np.ndarray,
        capacity: int,
        rng: np.random.Generator,
        state: dict[str, Any],
    ) -> list[Ref]:
        """Return the memory after seeing a new stage.

        ``labels[i]`` is the label of sample ``i`` of ``domain``'s train split. ``state`` is
        a JSON-serialisable dict owned by the policy (mutate it in place; it is saved with
        the buffer). The result must hold at most ``capacity`` references.
        """


_P = TypeVar("_P", bound=type)
_POLICIES: dict[str, type[SelectionPolicy]] = {}


def register_policy(name: str) -> Callable[[_P], _P]:
    """Class decorator registering a :class:`SelectionPolicy` subclass under ``name``."""

    def deco(cls: _P) -> _P:
        if not (isinstance(cls, type) and issubclass(cls, SelectionPolicy)):
            raise RehearsalError(f"@register_policy({name!r}) must decorate a SelectionPolicy subclass")
        if name in _POLICIES and _POLICIES[name] is not cls:
            raise RehearsalError(f"a rehearsal policy named {name!r} is already registered")
        cls.name = name
        _POLICIES[name] = cls
        return cls

    return deco


def available_policies() -> list[str]:
    """Names of the registered policies."""
    return list(_POLICIES)


def get_policy(name: str) -> SelectionPolicy:
    """Return a new instance of policy ``name`` (error lists the known names)."""
    if name not in _POLICIES:
        raise RehearsalError(
            f"unknown rehearsal policy {name!r}; known policies: {', '.join(available_policies())}"
        )
    return _POLICIES[name]()


@register_policy("reservoir")
class ReservoirPolicy(SelectionPolicy):
    """Classic reservoir sampling (Algorithm R) over the stream of all samples seen.

    Samples of each stage are streamed in index order; after any number of stages every
    sample seen so far is in memory with the same probability ``capacity / n_seen``.
    ``state["n_seen"]`` counts the stream length.
    """

    def update(
        self,
        memory: list[Ref],
        domain: str,
        labels: np.ndarray,
        capacity: int,
        rng: np.random.Generator,
        state: dict[str, Any],
    ) -> list[Ref]:
        """See :meth:`SelectionPolicy.update`."""
        n_seen = int(state.get("n_seen", 0))
        n = len(labels)
        mem = list(memory)
        fill = max(0, min(capacity - len(mem), n))
        mem += [(domain, i, int(labels[i])) for i in range(fill)]
        if fill < n and capacity > 0:
            pos = n_seen + np.arange(fill, n)  # 0-based stream position of each remaining sample
            j = rng.integers(0, pos + 1)  # Algorithm R: replace slot j if j < capacity
            hit = np.flatnonzero(j < capacity)
            slots = j[hit]
            # if several samples hit one slot, the later one wins (sequential semantics)
            _, first_rev = np.unique(slots[::-1], return_index=True)
            for h in len(slots) - 1 - first_rev:
                i = fill + int(hit[h])
                mem[int(slots[h])] = (domain, i, int(labels[i]))
        state["n_seen"] = n_seen + n
        return mem


def balanced_quotas(available: list[int], capacity: int) -> list[int]:
    """Split ``capacity`` slots evenly over groups, capped by what each group ``available``.

    Water-filling: slots a small group cannot use go to the others. Leftover slots
    (fewer than the open groups) go one each to the earliest groups in order.
    """
    quota = [0] * len(available)
    remaining = capacity
    open_ = [g for g, a in enumerate(available) if a > 0]
    while remaining > 0 and open_:
        share = remaining // len(open_)
        if share == 0:
            for g in open_[:remaining]:
                quota[g] += 1
            break
        for g in open_:
            give = min(share, available[g] - quota[g])
            quota[g] += give
            remaining -= give
        open_ = [g for g in open_ if quota[g] < available[g]]
    return quota


@register_policy("class_balanced")
class ClassBalancedPolicy(SelectionPolicy):
    """Memory split evenly across the ``(domain, label)`` groups seen so far.

    Groups are ordered by first appearance (stage order, then label). When a stage arrives,
    quotas are recomputed with :func:`balanced_quotas`; existing groups shrink by dropping
    random members, new groups are filled with a random subset of the stage's samples.
    Memory is kept grouped, each group in increasing index order.
    """

    def update(
        self,
        memory: list[Ref],
        domain: str,
        labels: np.ndarray,
        capacity: int,
        rng: np.random.Generator,
        state: dict[str, Any],
    ) -> list[Ref]:
        """See :meth:`SelectionPolicy.update`."""
        groups: list[list[Any]] = [list(g) for g in state.get("groups", [])]
        members: dict[tuple[str, int], list[Ref]] = {(g[0], int(g[1])): [] for g in groups}
        for ref in memory:
            members.setdefault((ref[0], int(ref[2])), []).append(ref)
        new_labels = [int(v) for v in np.unique(labels)]
        for lab in new_labels:
            if (domain, lab) not in members:
                groups.append([domain, lab])
        keys = [(g[0], int(g[1])) for g in groups]
        avail = [
            int(np.sum(labels == k[1])) if k[0] == domain else len(members.get(k, []))
            for k in keys
        ]
        quotas = balanced_quotas(avail, capacity)
        out: list[Ref] = []
        for key, q in zip(keys, quotas):
            if key[0] == domain:
                idx = np.flatnonzero(labels == key[1])
                pick = np.sort(rng.choice(idx, size=q, replace=False)) if q < len(idx) else idx
                out += [(domain, int(i), key[1]) for i in pick]
            else:
                old = members.get(key, [])
                if q < len(old):
                    keep = np.sort(rng.choice(len(old), size=q, replace=False))
                    old = [old[k] for k in keep]
                out += old
        state["groups"] = groups
        return out
