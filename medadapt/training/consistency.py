"""Whether every process holds the same rehearsal buffer (compared by digest across processes)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Sequence

from ..rehearsal import RehearsalBuffer


def buffer_digest(buffer: RehearsalBuffer) -> str:
    """sha256 of the buffer's state dict (JSON, sorted keys): equal digests mean equal buffers."""
    return hashlib.sha256(json.dumps(buffer.state_dict(), sort_keys=True).encode()).hexdigest()


def buffers_agree(buffer: RehearsalBuffer, gather: Callable[[list[Any]], list[Any]]) -> bool:
    """True when ``gather`` (one value per process, e.g. accelerate's ``gather_object``) finds one digest."""
    digests: Sequence[str] = gather([buffer_digest(buffer)])
    return len(set(digests)) == 1
