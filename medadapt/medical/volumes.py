"""2D slices of a 3D volume (a NIfTI scan, a CT stack held in numpy), windowed for display."""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
from PIL import Image

from ..errors import ImageError
from .windows import WindowSpec, apply_window, check_finite, resolve_window

__all__ = ["SliceSpec", "slice_indices", "volume_slices"]

#: Which slices to take: ``"middle"``, ``"all"``, one index, or a list of indices.
SliceSpec = Union[str, int, Sequence[int]]


def slice_indices(slices: SliceSpec, size: int, where: str, axis: int) -> list[int]:
    """Resolve ``slices`` against an axis of ``size`` slices; out-of-range indices raise :class:`ImageError`."""
    if isinstance(slices, str):
        if slices == "middle":
            return [size // 2]
        if slices == "all":
            return list(range(size))
        raise ImageError(f"{where}: slices must be 'middle', 'all', an index or a list of indices, got {slices!r}.")
    wanted = [slices] if isinstance(slices, (int, np.integer)) else list(slices)
    if not wanted:
        raise ImageError(f"{where}: no slice indices given.")
    for k in wanted:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ImageError(f"{where}: slice indices must be integers, got {k!r}.")
        if not -size <= int(k) < size:
            raise ImageError(
                f"{where}: slice {int(k)} is out of range along axis {axis}, which has {size} slices (0..{size - 1})."
            )
    return [int(k) % size for k in wanted]


def volume_slices(
    volume: np.ndarray,
    axis: int = 2,
    slices: SliceSpec = "middle",
    window: WindowSpec = None,
    where: str = "volume",
    rotate: bool = False,
) -> list[Image.Image]:
    """Greyscale 2D slices (PIL mode ``"L"``) of a 3D array along ``axis``.

    ``window``: a name from :data:`medadapt.medical.WINDOWS`, ``(center, width)`` in the volume's units,
    or ``None`` / ``"full"`` to stretch the whole volume's real range (so every slice shares one scale).
    ``rotate=True`` turns each slice by 90 degrees (used for NIfTI, whose first voxel axis runs left-right).
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ImageError(f"{where}: expected a 3D volume, got shape {tuple(volume.shape)}.")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -3 <= int(axis) < 3:
        raise ImageError(f"{where}: axis must be 0, 1 or 2, got {axis!r}.")
    axis = int(axis) % 3
    resolve_window(window)
    if not (np.issubdtype(volume.dtype, np.number) or volume.dtype == np.bool_):
        raise ImageError(f"{where}: voxel values of dtype {volume.dtype} are not numbers.")
    check_finite(volume, where)
    indices = slice_indices(slices, volume.shape[axis], where, axis)
    grey = apply_window(volume.astype(np.float64) if volume.dtype == np.bool_ else volume, window, where)
    out = []
    for k in indices:
        plane = np.take(grey, k, axis=axis)
        out.append(Image.fromarray(np.ascontiguousarray(np.rot90(plane) if rotate else plane), "L"))
    return out
