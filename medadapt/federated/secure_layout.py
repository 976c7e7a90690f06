"""The vector a site hands to Flower's SecAgg+, and how the server reads the secure sum back.

SecAgg+ (Flower's ``secaggplus_mod`` + ``SecAggPlusWorkflow``) reveals to the server only the
*sum* of the sites' quantised vectors, each site weighted equally. medadapt's mean is per adapter
(only the sites that trained an adapter count, weighted by their samples) and, under
``memory_weight: replay_ratio``, splits the shared adapter's sites into a new-data group and a
memory-only group. So each site packs, per adapter and per group ("slot"), its sample-weighted
update ``(c / max_weight) * (trained - received)`` and the weight ``c / max_weight`` itself, with
zeros in the slots that are not its own. The secure sum then holds, per adapter and slot, the
weighted update sum and the total weight: their ratio is exactly the sample-weighted mean update of
that group, computed without the server seeing any one site's tensors or weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..errors import FederationError
from .payload import SEP

SLOT_NAMES = ("new", "memory")
"""Slot 0: sites that hold new data of the adapter's domains; slot 1 (replay_ratio only): sites that only rehearse."""


@dataclass(frozen=True)
class SecureLayout:
    """What a secure round's vector holds: the travelling tensors ``names`` (with ``shapes``), in order,
    ``slots`` groups per adapter, weights divided by ``max_weight``, each entry bounded by ``clipping_range``."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    slots: tuple[tuple[str, int], ...]
    max_weight: float
    clipping_range: float

    @classmethod
    def build(cls, sent: Mapping[str, np.ndarray], slots: Mapping[str, int], max_weight: float, clipping_range: float) -> "SecureLayout":
        """The layout of a round that sends ``sent`` (``{"<adapter>/<tensor>": array}``)."""
        names = tuple(sent)
        adapters = tuple(dict.fromkeys(n.split(SEP, 1)[0] for n in names))
        return cls(names, tuple(tuple(np.shape(sent[n])) for n in names), tuple((a, int(slots.get(a, 1))) for a in adapters), float(max_weight), float(clipping_range))

    def to_json(self) -> str:
        """The layout as the JSON string a train message carries."""
        return json.dumps({"names": list(self.names), "shapes": [list(s) for s in self.shapes], "slots": [list(s) for s in self.slots],
                           "max_weight": self.max_weight, "clipping_range": self.clipping_range})

    @classmethod
    def from_json(cls, text: str) -> "SecureLayout":
        """Read :meth:`to_json`'s string; a malformed one is a :class:`FederationError`."""
        try:
            raw = json.loads(text)
            return cls(tuple(str(n) for n in raw["names"]), tuple(tuple(int(d) for d in s) for s in raw["shapes"]),
                       tuple((str(a), int(k)) for a, k in raw["slots"]), float(raw["max_weight"]), float(raw["clipping_range"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise FederationError(f"the secure-aggregation layout in the train message is malformed: {exc}") from exc

    def digest(self) -> str:
        """A short hash of the layout (sites echo it in clear so the server can check the vector they masked)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def _keys(self, adapter: str) -> list[int]:
        return [i for i, n in enumerate(self.names) if n.split(SEP, 1)[0] == adapter]

    def vector_shapes(self) -> list[tuple[int, ...]]:
        """The shapes of the packed vector's arrays (per adapter and slot: its tensors, then a 1-element weight)."""
        out: list[tuple[int, ...]] = []
        for adapter, slots in self.slots:
            for _ in range(slots):
                out += [self.shapes[i] for i in self._keys(adapter)] + [(1,)]
        return out

    def pack(self, trained: Sequence[np.ndarray], received: Sequence[np.ndarray], counts: Mapping[str, int], slot_of: Mapping[str, int]) -> list[np.ndarray]:
        """A site's vector: in its slot of each adapter, ``w * (trained - received)`` and ``w = count / max_weight``; zeros elsewhere.

        Refuses (:class:`FederationError`) non-finite tensors and entries beyond ``clipping_range``,
        which SecAgg+'s quantisation would silently clip.
        """
        if len(trained) != len(self.names) or len(received) != len(self.names):
            raise FederationError(f"secure aggregation: {len(trained)} trained / {len(received)} received tensors for a layout of {len(self.names)}.")
        out: list[np.ndarray] = []
        for adapter, slots in self.slots:
            weight = float(counts.get(adapter, 0)) / self.max_weight
            mine = int(slot_of.get(adapter, 0))
            if not 0 <= mine < slots:
                raise FederationError(f"secure aggregation: slot {mine} of adapter {adapter!r} is outside its {slots} slot(s).")
            deltas = []
            for i in self._keys(adapter):
                delta = np.asarray(trained[i], np.float64) - np.asarray(received[i], np.float64)
                if not np.all(np.isfinite(delta)):
                    raise FederationError(f"secure aggregation: this site's tensor {self.names[i]} holds NaN or inf; it is not sent.")
                deltas.append(delta)
            for slot in range(slots):
                out += [weight * d if slot == mine and weight > 0 else np.zeros_like(d) for d in deltas]
                out.append(np.array([weight if slot == mine else 0.0], np.float64))
        peak = max((float(np.max(np.abs(a))) for a in out if a.size), default=0.0)
        if peak > self.clipping_range:
            raise FederationError(
                f"secure aggregation: an entry of this site's weighted update is {peak:.3g}, beyond federation.privacy.secure_clipping_range="
                f"{self.clipping_range:g} (SecAgg+ would clip it silently); raise secure_clipping_range or secure_max_weight.")
        return out

    def group_means(self, sums: Sequence[np.ndarray], received: Mapping[str, np.ndarray]) -> list[tuple[str, dict[str, np.ndarray], dict[str, float]]]:
        """Read the secure sum back: per slot, ``(slot name, {tensor: received + mean update}, {adapter: total samples})``.

        Adapters (or slots) that no site trained are left out of that slot's tensors and counts.
        """
        shapes = self.vector_shapes()
        if len(sums) != len(shapes) or any(tuple(np.shape(s)) != tuple(shape) for s, shape in zip(sums, shapes)):
            raise FederationError(f"the secure sum has {len(sums)} arrays, not the layout's {len(shapes)} of the expected shapes.")
        groups: list[tuple[str, dict[str, np.ndarray], dict[str, float]]] = [(name, {}, {}) for name in SLOT_NAMES[: max((k for _, k in self.slots), default=1)]]
        position = 0
        for adapter, slots in self.slots:
            keys = self._keys(adapter)
            for slot in range(slots):
                parts = sums[position : position + len(keys)]
                weight = float(np.asarray(sums[position + len(keys)]).reshape(-1)[0])
                position += len(keys) + 1
                if weight < 0.5 / self.max_weight:  # less than half a sample: nobody trained it in this slot
                    continue
                _, tensors, counts = groups[slot]
                for i, part in zip(keys, parts):
                    name = self.names[i]
                    tensors[name] = (np.asarray(received[name], np.float64) + np.asarray(part, np.float64) / weight).astype(np.float32)
                counts[adapter] = weight * self.max_weight
        return groups
