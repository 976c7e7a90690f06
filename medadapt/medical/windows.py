"""Intensity windows: how raw medical values (Hounsfield units, MR signal, 16-bit counts) become grey levels.

A window is ``(center, width)`` in the image's own units (HU for CT). Values below
``center - width / 2`` become black, values above ``center + width / 2`` white, linearly in
between, with the DICOM "LINEAR" formula (PS3.3 C.11.2.1.2) that ``pydicom.pixels.apply_voi_lut``
uses, so a medadapt window and a viewer's window agree to within one grey level.

Without a window, values are stretched from their real minimum to their real maximum; only
``uint8`` data (and floats in ``[0, 1]``) are read as absolute intensities.
"""

from __future__ import annotations

from typing import Union

import numpy as np

from ..errors import ImageError

__all__ = [
    "WINDOWS",
    "FULL_RANGE",
    "Window",
    "WindowSpec",
    "resolve_window",
    "apply_window",
    "stretch_to_uint8",
    "scale_to_uint8",
    "check_finite",
]

#: Named windows, ``name -> (center, width)`` in Hounsfield units (CT). Common radiology presets.
WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (40.0, 40.0),
    "temporal_bone": (600.0, 2800.0),
    "soft_tissue": (40.0, 400.0),
    "abdomen": (40.0, 400.0),
    "mediastinum": (50.0, 350.0),
    "liver": (60.0, 160.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}

#: Window name meaning "the values' real minimum to maximum" (ignores a DICOM file's own window).
FULL_RANGE = "full"

#: ``(center, width)`` in the data's units.
Window = tuple[float, float]
#: What users may pass as ``window``: ``None`` (default), a name from :data:`WINDOWS`, or ``(center, width)``.
WindowSpec = Union[None, str, tuple[float, float], list]
_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def resolve_window(window: WindowSpec) -> Window | None:
    """Return ``(center, width)`` for a window name or pair; ``None`` and ``"full"`` give ``None``.

    Raises :class:`ImageError` for an unknown name (listing the known ones) or a bad pair.
    """
    if window is None:
        return None
    if isinstance(window, str):
        key = window.strip().lower().replace("-", "_").replace(" ", "_")
        if key == FULL_RANGE:
            return None
        if key not in WINDOWS:
            raise ImageError(
                f"unknown window name {window!r}; known windows: {', '.join(sorted(WINDOWS))} (and {FULL_RANGE!r} "
                "for the real min..max), or give (center, width) in the image's units, e.g. window=(40, 400)."
            )
        return WINDOWS[key]
    if isinstance(window, (tuple, list)) and len(window) == 2:
        try:
            center, width = float(window[0]), float(window[1])
        except (TypeError, ValueError):
            center = width = float("nan")
        if np.isfinite(center) and np.isfinite(width) and width >= 1.0:
            return center, width
    raise ImageError(
        f"window must be a name ({', '.join(sorted(WINDOWS))}) or (center, width) with a finite "
        f"center and a width of at least 1, got {window!r}."
    )


def check_finite(values: np.ndarray, where: str) -> None:
    """Raise :class:`ImageError` if ``values`` holds NaN or infinity (say how many)."""
    if np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.complexfloating):
        bad = ~np.isfinite(values)
        if bad.any():
            raise ImageError(
                f"{where}: image contains NaN or infinite values ({int(bad.sum())} of {values.size} pixels); "
                "replace them (e.g. numpy.nan_to_num) before passing the image."
            )


def apply_window(values: np.ndarray, window: WindowSpec, where: str = "image", function: str = "LINEAR") -> np.ndarray:
    """Map ``values`` through ``window`` (name or ``(center, width)``) to ``uint8`` grey levels.

    ``function`` is the DICOM VOI LUT Function: ``LINEAR`` (default,
    ``(x - (c - 0.5)) / (w - 1) + 0.5``), ``LINEAR_EXACT`` (``(x - c) / w + 0.5``) or ``SIGMOID``;
    the result is clipped to ``[0, 1]`` and scaled to 0..255. ``window=None`` or ``"full"``
    stretches the real range instead (:func:`stretch_to_uint8`).
    """
    resolved = resolve_window(window)
    values = np.asarray(values)
    if resolved is None:
        return stretch_to_uint8(values, where)
    center, width = resolved
    check_finite(values, where)
    x = values.astype(np.float64)
    function = str(function or "LINEAR").upper()
    if function not in _FUNCTIONS:
        raise ImageError(f"{where}: unknown VOI LUT function {function!r}; known: {', '.join(_FUNCTIONS)}.")
    if function == "SIGMOID":
        y = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "LINEAR_EXACT":
        y = np.clip((x - center) / width + 0.5, 0.0, 1.0)
    elif width <= 1.0:  # DICOM LINEAR: a width of 1 is a threshold at the center
        y = (x > center - 0.5).astype(np.float64)
    else:
        y = np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
    return np.round(y * 255.0).astype(np.uint8)


def stretch_to_uint8(values: np.ndarray, where: str = "image") -> np.ndarray:
    """Map the values' real minimum to 0 and real maximum to 255 (a constant image becomes 0)."""
    values = np.asarray(values)
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise ImageError(f"{where}: pixel values of dtype {values.dtype} are not numbers.")
    check_finite(values, where)
    if values.size == 0:
        return values.astype(np.uint8)
    x = values.astype(np.float64)
    low, high = float(x.min()), float(x.max())
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return np.round((x - low) * (255.0 / (high - low))).astype(np.uint8)


def scale_to_uint8(values: np.ndarray, where: str = "image") -> np.ndarray:
    """Grey levels from the values' own range: ``uint8`` as is, ``bool`` to 0/255, floats in ``[0, 1]``
    times 255, anything else stretched from its real minimum (black) to its real maximum (white)."""
    values = np.asarray(values)
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    if np.issubdtype(values.dtype, np.floating):
        check_finite(values, where)
        if values.size and float(values.min()) >= 0.0 and float(values.max()) <= 1.0:
            return np.round(values.astype(np.float64) * 255.0).astype(np.uint8)
    return stretch_to_uint8(values, where)
