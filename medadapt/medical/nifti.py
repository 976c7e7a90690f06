"""NIfTI (and other nibabel-readable) volumes as 2D slices (``pip install "medadapt[nifti]"``).

The volume is first turned to the closest canonical (RAS+) orientation, so ``axis=0`` gives
sagittal, ``axis=1`` coronal and ``axis=2`` axial slices whatever the scanner's voxel order; each
slice is rotated so that superior (anterior, for axial slices) is at the top and the patient's
left is on the image's left (the "neurological" convention of FSL and nibabel's viewer). Check what the model
sees with ``medadapt show scan.nii.gz --axis 2 --slice middle``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import ImageError
from .extras import require_module
from .volumes import SliceSpec, volume_slices
from .windows import WindowSpec

__all__ = ["NIFTI_EXTRA", "NIFTI_SUFFIXES", "is_nifti", "nifti_volume", "nifti_slices"]

NIFTI_EXTRA = 'pip install "medadapt[nifti]"'
NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".img", ".img.gz")


def _nibabel() -> Any:
    return require_module("nibabel", "reading NIfTI", NIFTI_EXTRA)


def is_nifti(source: Any) -> bool:
    """True for a nibabel image object or a path ending in .nii, .nii.gz, .hdr or .img."""
    if type(source).__module__.startswith("nibabel") and hasattr(source, "affine"):
        return True
    if isinstance(source, (str, os.PathLike)):
        name = str(source).lower()
        return any(name.endswith(suffix) for suffix in NIFTI_SUFFIXES)
    return False


def nifti_volume(source: Any, volume: int | None = None) -> np.ndarray:
    """The scaled voxel values (``scl_slope``/``scl_inter`` applied) in RAS+ order, as a 3D float array.

    ``source``: a path or a nibabel image. A 4D series needs ``volume`` (the time point to read).
    """
    nib = _nibabel()
    name = str(source) if isinstance(source, (str, os.PathLike)) else "NIfTI image"
    if isinstance(source, (str, os.PathLike)):
        if not Path(source).exists():
            raise ImageError(f"NIfTI file not found: {name}")
        try:
            image = nib.load(str(source))
        except Exception as exc:  # noqa: BLE001 - nibabel raises many types for broken files
            raise ImageError(f"cannot read NIfTI {name}: {type(exc).__name__}: {exc}") from exc
    else:
        image = source
    if getattr(image, "affine", None) is None or not hasattr(image, "get_fdata"):
        raise ImageError(f"{name} is not a spatial volume with an orientation ({type(image).__name__}).")
    try:
        data = nib.as_closest_canonical(image).get_fdata(dtype=np.float64)  # scl_slope/scl_inter applied
    except Exception as exc:  # noqa: BLE001 - truncated data raise EOFError/ValueError/OSError
        raise ImageError(f"cannot read the voxels of {name}: {type(exc).__name__}: {exc} (is the file truncated?)") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 4:
        if volume is None:
            raise ImageError(f"{name} is a 4D series of {data.shape[3]} volumes; pick one with volume=t (0..{data.shape[3] - 1}).")
        if isinstance(volume, bool) or not isinstance(volume, (int, np.integer)):
            raise ImageError(f"{name}: the volume index must be an integer (0..{data.shape[3] - 1}), got {volume!r}.")
        if not -data.shape[3] <= int(volume) < data.shape[3]:
            raise ImageError(f"{name}: volume {volume} is out of range; it has {data.shape[3]} volumes (0..{data.shape[3] - 1}).")
        data = data[..., int(volume)]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise ImageError(f"{name}: expected a 3D volume (or 4D series), got voxel array shape {data.shape}.")
    return data


def nifti_slices(
    source: Any,
    axis: int = 2,
    slices: SliceSpec = "middle",
    window: WindowSpec = None,
    volume: int | None = None,
) -> list[Image.Image]:
    """2D greyscale slices (PIL ``"L"``) of a NIfTI volume, ready to pass to the model.

    ``axis``: 0 sagittal, 1 coronal, 2 axial (after reorienting to RAS+). ``slices``: ``"middle"``
    (default), ``"all"``, an index or a list of indices. ``window``: a name (e.g. ``"brain"``),
    ``(center, width)`` in the file's units, or ``None`` for the whole volume's real range.
    """
    data = nifti_volume(source, volume=volume)
    where = str(source) if isinstance(source, (str, os.PathLike)) else "NIfTI image"
    return volume_slices(data, axis=axis, slices=slices, window=window, where=where, rotate=True)
