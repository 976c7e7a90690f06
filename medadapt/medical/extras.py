"""Optional dependencies (pip extras) imported on first use, with an error that names the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import MissingExtraError

__all__ = ["require_module"]


def require_module(name: str, purpose: str, install: str) -> ModuleType:
    """Import ``name`` or raise :class:`MissingExtraError` saying ``purpose`` needs it and how to ``install`` it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise MissingExtraError(f"{purpose} needs {name.split('.')[0]}: {install}") from exc
