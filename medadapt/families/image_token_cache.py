"""A bounded cache of projected image tokens for generative stages that train only the language model.

When an adapter leaves the vision tower and the projector untouched, an image's projected image
tokens (what the language model receives in place of its image placeholders) are the same in every
epoch, in evaluation and in rehearsal replays. :class:`ImageTokenCache` keeps them per sample, in
memory up to ``memory_bytes`` and then, optionally, in a memory-mapped spill file (raw bytes, no
pickling) up to ``spill_bytes``; beyond both budgets features are simply recomputed.

Every entry is keyed by the sample and by a *stamp* of everything upstream of the language model
(the base's vision-tower and projector weights and their in-place versions, the image processor's
settings, dtype and autocast state). :meth:`ImageTokenCache.check_stamp` drops every entry when the
stamp changes, so an entry made before a base change is never read after it. The spill file is
truncated when the cache is opened and deleted when it is closed: a resumed run rebuilds the cache.

Which calls may use it (the served adapters have no parameter upstream of the language model, no
upstream parameter trains) is decided by the generative scorer from actual parameters; the reason
for every refusal is counted in :attr:`ImageTokenCache.refusals`.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Iterable

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["ImageCacheSettings", "ImageTokenCache", "SPILL_NAME", "processor_stamp", "weights_stamp"]

SPILL_NAME = "image_token_cache.bin"


@dataclass(frozen=True)
class ImageCacheSettings:
    """How much the cache may hold: ``memory_bytes`` in RAM (0: no cache), then ``spill_bytes`` in a
    memory-mapped file ``spill_dir / spill_name`` (0 or no folder: no spill)."""

    memory_bytes: int = 1 << 30
    spill_bytes: int = 0
    spill_dir: str | None = None
    spill_name: str = SPILL_NAME  # one per process when several share the folder

    def __post_init__(self) -> None:
        if self.memory_bytes < 0 or self.spill_bytes < 0:
            raise ConfigError(f"image cache budgets must be >= 0, got memory {self.memory_bytes}, spill {self.spill_bytes}.")


def processor_stamp(image_processor: Any) -> str:
    """sha256 of an image processor's settings (its ``to_dict()``, or its ``__dict__``)."""
    settings = image_processor.to_dict() if hasattr(image_processor, "to_dict") else dict(vars(image_processor))
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def weights_stamp(params: Iterable[nn.Parameter]) -> tuple:
    """Identity and in-place version of each parameter: changes when any is replaced or written."""
    return tuple((id(p), p._version, tuple(p.shape), str(p.dtype), str(p.device)) for p in params)


class _Spill:
    """A fixed-size memory-mapped byte file: entries appended until it is full."""

    def __init__(self, folder: str, name: str, size: int) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.path = Path(folder) / name
        self.file = open(self.path, "w+b")  # truncated: never read what an earlier process wrote
        self.file.truncate(size)  # sparse on most file systems: only written bytes take disk space
        self.map = mmap.mmap(self.file.fileno(), size)
        self.used = 0

    def write(self, tensor: torch.Tensor) -> tuple[int, int] | None:
        raw = tensor.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes()
        if self.used + len(raw) > len(self.map):
            return None
        self.map[self.used : self.used + len(raw)] = raw
        where = (self.used, len(raw))
        self.used += len(raw)
        return where

    def read(self, where: tuple[int, int], dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        start, size = where
        raw = torch.frombuffer(bytearray(self.map[start : start + size]), dtype=torch.uint8)  # a copy: nothing aliases the file
        return raw.view(dtype).view(shape)

    def close(self) -> None:
        self.map.close()
        self.file.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:  # pragma: no cover - removed by someone else
            pass


class ImageTokenCache:
    """Per-sample projected image tokens, bounded in memory (and optionally spilled to disk)."""

    def __init__(self, settings: ImageCacheSettings | None = None) -> None:
        self.settings = settings or ImageCacheSettings()
        self._memory: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._spilled: dict[Hashable, tuple[tuple[int, int], torch.dtype, tuple[int, ...], torch.device]] = {}
        self._spill = _Spill(self.settings.spill_dir, self.settings.spill_name, self.settings.spill_bytes) if self.settings.spill_bytes and self.settings.spill_dir else None
        self._stamp: Any = None
        self.memory_bytes = 0
        self.hits = 0
        self.misses = 0
        self.invalidations = 0
        self.refusals: Counter[str] = Counter()  # why a call could not use the cache, and how often

    def __len__(self) -> int:
        return len(self._memory) + len(self._spilled)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._memory or key in self._spilled

    @property
    def spill_path(self) -> Path | None:
        return self._spill.path if self._spill is not None else None

    @property
    def spilled_bytes(self) -> int:
        return self._spill.used if self._spill is not None else 0

    def check_stamp(self, stamp: Any) -> None:
        """Drop every entry when what is upstream of the language model differs from when they were made."""
        if stamp != self._stamp:
            if len(self):
                self.invalidations += 1
            self.clear()
            self._stamp = stamp

    def clear(self) -> None:
        """Forget every entry (the spill file's space is reused from its start)."""
        self._memory.clear()
        self._spilled.clear()
        self.memory_bytes = 0
        if self._spill is not None:
            self._spill.used = 0

    def get(self, key: Hashable) -> torch.Tensor | None:
        """The entry of ``key`` (counted as a hit), or None (a miss)."""
        hit = self._memory.get(key)
        if hit is None and key in self._spilled:
            where, dtype, shape, device = self._spilled[key]
            hit = self._spill.read(where, dtype, shape).to(device)  # type: ignore[union-attr]
        if hit is None:
            self.misses += 1
        else:
            self.hits += 1
        return hit

    def put(self, key: Hashable, tokens: torch.Tensor) -> bool:
        """Keep ``tokens`` for ``key`` if a budget has room; returns whether it was kept."""
        if key in self:
            return True
        tokens = tokens.detach()
        size = tokens.numel() * tokens.element_size()
        if self.memory_bytes + size <= self.settings.memory_bytes:
            self._memory[key] = tokens
            self.memory_bytes += size
            return True
        if self._spill is not None and self.settings.memory_bytes > 0:
            where = self._spill.write(tokens)
            if where is not None:
                self._spilled[key] = (where, tokens.dtype, tuple(tokens.shape), tokens.device)
                return True
        return False

    def refuse(self, reason: str) -> None:
        """Record that a call ran uncached, and why."""
        self.refusals[reason] += 1

    def stats(self) -> dict[str, Any]:
        """Counts and sizes, for logs and benchmarks."""
        return {
            "entries": len(self), "in_memory": len(self._memory), "spilled": len(self._spilled),
            "memory_bytes": self.memory_bytes, "spilled_bytes": self.spilled_bytes,
            "hits": self.hits, "misses": self.misses, "invalidations": self.invalidations,
            "refusals": dict(self.refusals),
        }

    def close(self) -> None:
        """Forget everything and delete the spill file."""
        self.clear()
        if self._spill is not None:
            self._spill.close()
            self._spill = None
