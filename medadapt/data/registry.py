"""The table of data formats: ``register_loader`` adds one, ``registered_formats`` lists them.

It lives apart from the loaders so that :class:`~medadapt.data.base.DataConfig` can validate a
format name without importing every loader (and without an import cycle).
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import DataError

LoaderFn = Callable[[str, list[str], Any], Any]  # (name, labels, DataConfig) -> DomainData
_LOADERS: dict[str, LoaderFn] = {}


def register_loader(fmt: str) -> Callable[[LoaderFn], LoaderFn]:
    """Decorator registering ``fn(name, labels, config) -> DomainData`` for format ``fmt``."""
    if not isinstance(fmt, str) or not fmt:
        raise DataError(f"loader format must be a non-empty string, got {fmt!r}")

    def deco(fn: LoaderFn) -> LoaderFn:
        if fmt in _LOADERS and _LOADERS[fmt] is not fn:
            raise DataError(f"a loader for format {fmt!r} is already registered")
        _LOADERS[fmt] = fn
        return fn

    return deco


def registered_formats() -> list[str]:
    """Names of all registered data formats."""
    return list(_LOADERS)


def loader_for(fmt: str) -> LoaderFn:
    """The loader registered for ``fmt`` (formats are validated by ``DataConfig`` before this)."""
    if fmt not in _LOADERS:
        raise DataError(f"unknown data format {fmt!r}; valid formats: {', '.join(_LOADERS)}")
    return _LOADERS[fmt]


MemoryLoaderFn = Callable[[str, list[str], Any, Any], Any]  # (name, labels, DataConfig, in-memory source) -> DomainData
_MEMORY: dict[str, MemoryLoaderFn] = {}


def register_memory_loader(fmt: str) -> Callable[[MemoryLoaderFn], MemoryLoaderFn]:
    """Decorator registering ``fn(name, labels, config, source) -> DomainData``: format ``fmt`` read from an
    in-memory object (a ``datasets.Dataset``/``DatasetDict``) instead of ``path``/``dataset``."""

    def deco(fn: MemoryLoaderFn) -> MemoryLoaderFn:
        _MEMORY[fmt] = fn
        return fn

    return deco


def memory_loader_for(fmt: str) -> MemoryLoaderFn:
    """The in-memory loader of ``fmt``; a DataError names the formats that take in-memory data."""
    if fmt not in _MEMORY:
        raise DataError(f"data format {fmt!r} cannot read an in-memory dataset; formats that can: {sorted(_MEMORY)}")
    return _MEMORY[fmt]
