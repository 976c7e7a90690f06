"""Bounded rehearsal memory of references to earlier domains' training samples.

The buffer stores ``(domain, index, label)`` references, never image copies; the
trainer (:mod:`medadapt.training`) turns them back into samples from the domains' datasets.

Multi-process (distributed) use: :meth:`RehearsalBuffer.add_stage` takes the *full* list
of a stage's train labels (sample ``i`` has label ``labels[i]``), and all randomness comes
from the buffer's own seeded generator. Every process that builds a buffer with the same
``(size, policy, seed)`` and calls ``add_stage`` with the same inputs in the same order
therefore computes the identical memory, with no communication. Give each rank its own
``rng`` only for :meth:`RehearsalBuffer.sample` (or shard the references of :meth:`RehearsalBuffer.items`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from .policies import Ref, RehearsalError, get_policy

__all__ = ["RehearsalBuffer", "replay_count"]

_STATE_VERSION = 1
_STATE_KEYS = ("version", "size", "policy", "seed", "memory", "rng_state", "stages", "policy_state")


def _check_int(name: str, v: Any, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise RehearsalError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


class RehearsalBuffer:
    """A memory of at most ``size`` references chosen by ``policy`` (seeded by ``seed``).

    ``size=0`` disables rehearsal: the memory stays empty and :meth:`sample` returns ``[]``
    (stages are still recorded). Policies: see :func:`medadapt.rehearsal.available_policies`.
    """

    def __init__(self, size: int, policy: str = "class_balanced", seed: int = 0) -> None:
        self.size = _check_int("rehearsal buffer size", size, 0)
        self.seed = _check_int("rehearsal buffer seed", seed, 0)
        self._policy = get_policy(policy)
        self.policy = policy
        self._rng = np.random.default_rng(self.seed)
        self._memory: list[Ref] = []
        self._stages: list[str] = []
        self._policy_state: dict[str, Any] = {}

    # ------------------------------------------------------------------ updating
    def add_stage(self, domain: str, labels: np.ndarray | list[int]) -> None:
        """Update the memory with a stage: ``labels[i]`` is the label of train sample ``i``.

        Call once per stage (at or after training on it) with the stage's *full* train
        labels. Adding the same domain twice is an error.
        """
        if not isinstance(domain, str) or not domain:
            raise RehearsalError(f"domain must be a non-empty string, got {domain!r}")
        if domain in self._stages:
            raise RehearsalError(f"domain {domain!r} was already added to the rehearsal buffer (stages: {self._stages})")
        arr = np.asarray(labels)
        if arr.ndim != 1 or arr.size == 0:
            raise RehearsalError(f"labels of domain {domain!r} must be a non-empty 1-D array, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise RehearsalError(f"labels of domain {domain!r} must be integers, got dtype {arr.dtype}")
        if arr.min() < -1:  # -1: a sample whose answer is free text (VQA); kept as one class of its own
            raise RehearsalError(f"labels of domain {domain!r} must be >= 0 (or -1 for a free-text answer), got {int(arr.min())}")
        arr = arr.astype(np.int64)
        if self.size > 0:
            mem = self._policy.update(list(self._memory), domain, arr, self.size, self._rng, self._policy_state)
            if len(mem) > self.size:
                raise RehearsalError(f"policy {self.policy!r} returned {len(mem)} items for a buffer of size {self.size}")
            self._memory = [(str(d), int(i), int(y)) for d, i, y in mem]
        self._stages.append(domain)

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self._memory)

    def items(self) -> list[Ref]:
        """All references ``(domain, index, label)`` in memory (a copy)."""
        return list(self._memory)

    def domains(self) -> list[str]:
        """Domains with at least one item in memory, in stage order."""
        present = {d for d, _, _ in self._memory}
        return [d for d in self._stages if d in present]

    @property
    def stages(self) -> list[str]:
        """All domains added so far, in order (including any with no items in memory)."""
        return list(self._stages)

    def counts(self) -> dict[tuple[str, int], int]:
        """Number of memory items per ``(domain, label)`` group."""
        out: dict[tuple[str, int], int] = {}
        for d, _, y in self._memory:
            out[(d, y)] = out.get((d, y), 0) + 1
        return out

    def sample(self, k: int, rng: np.random.Generator) -> list[Ref]:
        """Draw ``k`` references uniformly (without replacement if ``k <= len``, else with).

        Uses the caller's ``rng``, not the buffer's, so sampling never changes the memory
        updates. Returns ``[]`` when the memory is empty or ``k == 0``.
        """
        k = _check_int("sample size k", k, 0)
        n = len(self._memory)
        if n == 0 or k == 0:
            return []
        idx = rng.choice(n, size=k, replace=k > n)
        return [self._memory[int(i)] for i in idx]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: size, policy, seed, memory, rng state, stages seen."""
        return {
            "version": _STATE_VERSION,
            "size": self.size,
            "policy": self.policy,
            "seed": self.seed,
            "memory": [[d, i, y] for d, i, y in self._memory],
            "rng_state": _jsonable(self._rng.bit_generator.state),
            "stages": list(self._stages),
            "policy_state": _jsonable(self._policy_state),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (including size, policy and seed it records)."""
        if not isinstance(state, Mapping):
            raise RehearsalError(f"rehearsal state must be a mapping, got {type(state).__name__}")
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise RehearsalError(f"rehearsal state is missing keys {missing}; has {sorted(state)}")
        if state["version"] != _STATE_VERSION:
            raise RehearsalError(f"unsupported rehearsal state version {state['version']!r} (expected {_STATE_VERSION})")
        size = _check_int("size in rehearsal state", state["size"], 0)
        policy = get_policy(state["policy"])
        memory: list[Ref] = []
        for item in state["memory"]:
            if not (isinstance(item, (list, tuple)) and len(item) == 3 and isinstance(item[0], str)):
                raise RehearsalError(f"bad memory item {item!r} in rehearsal state; expected [domain, index, label]")
            memory.append((item[0], int(item[1]), int(item[2])))
        if len(memory) > size:
            raise RehearsalError(f"rehearsal state holds {len(memory)} items but size is {size}")
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = dict(state["rng_state"])
        except (TypeError, ValueError, KeyError) as e:
            raise RehearsalError(f"bad rng_state in rehearsal state: {e}") from e
        self.size, self.seed, self.policy, self._policy = size, int(state["seed"]), state["policy"], policy
        self._memory, self._rng = memory, rng
        self._stages = [str(s) for s in state["stages"]]
        self._policy_state = dict(state["policy_state"])

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "RehearsalBuffer":
        """Build a buffer from a :meth:`state_dict`."""
        buf = cls(size=0)
        buf.load_state_dict(state)
        return buf

    def __repr__(self) -> str:
        return f"RehearsalBuffer(size={self.size}, policy={self.policy!r}, len={len(self)}, stages={self._stages})"


def _jsonable(x: Any) -> Any:
    """Deep-copy into plain JSON types (dicts, lists, str, int, float, bool, None)."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return [_jsonable(v) for v in x.tolist()]
    return x


def replay_count(batch_size: int, ratio: float) -> int:
    """Replay samples to add to ``batch_size`` new samples so that ``ratio`` of the batch is replay.

    ``r = round(batch_size * ratio / (1 - ratio))``, at least 1 when ``ratio > 0``; e.g.
    ``replay_count(32, 0.5) == 32`` and ``replay_count(32, 0.2) == 8``. ``0 <= ratio < 1``.
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or not 0 <= ratio < 1:
        raise RehearsalError(f"replay ratio must be a number in [0, 1), got {ratio!r}")
    if ratio == 0:
        return 0
    return max(1, int(round(batch_size * ratio / (1.0 - ratio))))
