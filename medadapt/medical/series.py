"""A folder (or list) of single-frame DICOM slices of one series, read as one 3D volume.

Slices are ordered by their position along the slice normal: ``ImagePositionPatient`` projected on
``cross(row, column)`` of ``ImageOrientationPatient`` (how dcm2niix and nibabel's DICOM reader order
them), never by file name or Instance Number, which scanners and anonymisers do not keep in
anatomical order. Refused with an :class:`ImageError` that names the files:

* files of more than one series (pick one with ``series_uid=``);
* slices whose orientation, size or pixel spacing differ;
* two slices at the same position, or gaps between slices that differ by more than
  :data:`SPACING_TOLERANCE` (a missing slice);
* multi-frame files (read those with :func:`medadapt.medical.dicom_frames`).

The volume holds Modality-LUT values (Hounsfield units for CT), shape ``(rows, columns, slices)``;
:func:`dicom_series_slices` hands it to :func:`medadapt.medical.volume_slices` (``axis=2`` gives
the stored slices, ``0``/``1`` reformats).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..errors import ImageError
from .dicom import dicom_values, frame_count, header_number, is_dicom, read_dataset
from .volumes import SliceSpec, volume_slices
from .windows import WindowSpec

__all__ = ["SPACING_TOLERANCE", "DicomSeries", "dicom_series", "dicom_series_slices"]

#: Largest relative difference allowed between the gaps of consecutive slices (1%).
SPACING_TOLERANCE = 0.01
_ORIENTATION_TOLERANCE = 1e-4


@dataclass
class DicomSeries:
    """One series as a volume: Modality-LUT values ``(rows, columns, slices)`` in anatomical order."""

    volume: np.ndarray
    files: list[str]  # the slices' sources, in the volume's order
    positions: np.ndarray  # (slices,) position of each slice along the normal, in mm, increasing
    spacing: tuple[float, float, float]  # (row, column, slice) spacing in mm
    normal: np.ndarray  # (3,) unit slice normal in patient coordinates
    series_uid: str
    window: tuple[float, float] | None  # the window every slice's header agrees on, if any
    inverted: bool  # MONOCHROME1: high values are dark


def _sources(source: Any) -> list[Any]:
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise ImageError(f"DICOM series folder not found: {folder}")
        files = sorted(f for f in folder.rglob("*") if f.is_file() and f.name.upper() != "DICOMDIR" and is_dicom(f))
        if not files:
            raise ImageError(f"{folder} holds no DICOM files (.dcm / .dicom, or with the DICM marker).")
        return [str(f) for f in files]
    if isinstance(source, (list, tuple)) and source:
        return list(source)
    raise ImageError(f"a DICOM series is a folder or a non-empty list of files or datasets, got {type(source).__name__}.")


def _label(item: Any, ds: Any) -> str:
    return str(item) if isinstance(item, (str, os.PathLike)) else str(getattr(ds, "filename", None) or "DICOM dataset")


def _vector(ds: Any, keyword: str, size: int, name: str) -> np.ndarray:
    if keyword not in ds:
        raise ImageError(f"{name}: its header lacks {keyword}, which is needed to place the slice in a volume.")
    try:
        values = np.array([float(v) for v in ds[keyword].value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ImageError(f"{name}: its {keyword} is {ds[keyword].value!r}, not {size} numbers.") from exc
    if values.shape != (size,) or not np.isfinite(values).all():
        raise ImageError(f"{name}: its {keyword} is {ds[keyword].value!r}, not {size} finite numbers.")
    return values


def _pick_series(items: list[Any], datasets: list[Any], series_uid: str | None) -> tuple[list[Any], list[Any], str]:
    uids = [str(ds.get("SeriesInstanceUID", "") or "") for ds in datasets]
    if series_uid is not None:
        keep = [k for k, u in enumerate(uids) if u == series_uid]
        if not keep:
            raise ImageError(f"no slice belongs to series {series_uid!r}; the files hold {sorted(set(uids))}.")
        return [items[k] for k in keep], [datasets[k] for k in keep], series_uid
    found = sorted(set(uids))
    if len(found) > 1:
        counts = ", ".join(f"{u or '(none)'}: {uids.count(u)} file(s)" for u in found)
        raise ImageError(
            f"the files belong to {len(found)} series ({counts}); a volume is one series: pass series_uid=... "
            "or put each series in its own folder."
        )
    return items, datasets, found[0]


def dicom_series(source: str | os.PathLike | Sequence[Any], series_uid: str | None = None) -> DicomSeries:
    """Read the slices in ``source`` (a folder, or a list of paths / bytes / pydicom datasets) as one volume.

    ``series_uid`` picks one series when the files hold several. See the module docstring for the
    order of the slices and what is refused.
    """
    items = _sources(source)
    datasets = [read_dataset(item) for item in items]
    items, datasets, uid = _pick_series(items, datasets, series_uid)
    names = [_label(item, ds) for item, ds in zip(items, datasets)]
    first = names[0]
    orientation = _vector(datasets[0], "ImageOrientationPatient", 6, first)
    row, column = orientation[:3], orientation[3:]
    normal = np.cross(row, column)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise ImageError(f"{first}: its ImageOrientationPatient {orientation.tolist()} is not two unit, orthogonal directions.")
    shape = (int(datasets[0].Rows), int(datasets[0].Columns))
    pixel = _vector(datasets[0], "PixelSpacing", 2, first) if "PixelSpacing" in datasets[0] else np.array([1.0, 1.0])
    interpretation = str(datasets[0].get("PhotometricInterpretation", "")).upper()
    positions = []
    for ds, name in zip(datasets, names):
        if frame_count(ds) > 1:
            raise ImageError(f"{name} holds {frame_count(ds)} frames; a series is read from single-frame files (use dicom_frames).")
        other = _vector(ds, "ImageOrientationPatient", 6, name)
        if not np.allclose(other, orientation, atol=_ORIENTATION_TOLERANCE):
            raise ImageError(
                f"slices of one series have different orientations: {first} has {orientation.tolist()}, "
                f"{name} has {other.tolist()}; they do not form one volume."
            )
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise ImageError(f"slices of one series have different sizes: {first} is {shape}, {name} is {(int(ds.Rows), int(ds.Columns))}.")
        spacing = _vector(ds, "PixelSpacing", 2, name) if "PixelSpacing" in ds else np.array([1.0, 1.0])
        if not np.allclose(spacing, pixel, rtol=SPACING_TOLERANCE):
            raise ImageError(f"slices of one series have different pixel spacings: {first} {pixel.tolist()}, {name} {spacing.tolist()}.")
        if str(ds.get("PhotometricInterpretation", "")).upper() != interpretation:
            raise ImageError(f"slices of one series have different photometric interpretations ({first}, {name}).")
        positions.append(float(np.dot(_vector(ds, "ImagePositionPatient", 3, name), normal)))
    order = np.argsort(positions, kind="stable")
    where = np.asarray(positions)[order]
    sorted_names = [names[k] for k in order]
    gaps = np.diff(where)
    if len(gaps):
        same = np.flatnonzero(gaps < 1e-3)
        if len(same):
            k = int(same[0])
            raise ImageError(f"{sorted_names[k]} and {sorted_names[k + 1]} lie at the same position ({where[k]:.3f} mm along the normal).")
        typical = float(np.median(gaps))
        off = np.flatnonzero(np.abs(gaps - typical) > SPACING_TOLERANCE * typical)
        if len(off):
            k = int(off[0])
            raise ImageError(
                f"inconsistent slice spacing: the slices are {typical:.3f} mm apart, but {sorted_names[k]} and "
                f"{sorted_names[k + 1]} are {gaps[k]:.3f} mm apart (a missing or extra slice?)."
            )
    volume = np.stack([dicom_values(datasets[k]) for k in order], axis=-1)
    windows = set()
    for ds, name in zip(datasets, names):
        if "WindowCenter" in ds and "WindowWidth" in ds:
            fix = "pass a window to dicom_series_slices (window='full', a name or (center, width))."
            windows.add((header_number(ds, "WindowCenter", name, fix), header_number(ds, "WindowWidth", name, fix)))
        else:
            windows.add(None)
    window = windows.pop() if len(windows) == 1 else None
    return DicomSeries(
        volume=volume,
        files=sorted_names,
        positions=where,
        spacing=(float(pixel[0]), float(pixel[1]), float(np.median(gaps)) if len(gaps) else 0.0),
        normal=normal,
        series_uid=uid,
        window=window if window is not None and window[1] >= 1.0 else None,
        inverted=interpretation == "MONOCHROME1",
    )


def dicom_series_slices(
    source: str | os.PathLike | Sequence[Any],
    axis: int = 2,
    slices: SliceSpec = "middle",
    window: WindowSpec = None,
    series_uid: str | None = None,
) -> list[Image.Image]:
    """Greyscale slices (PIL ``"L"``) of a DICOM series read with :func:`dicom_series`.

    ``axis=2`` gives the stored slices in anatomical order; ``window=None`` uses the window all the
    slices' headers agree on, else the volume's real range; MONOCHROME1 is inverted.
    """
    series = dicom_series(source, series_uid=series_uid)
    where = str(source) if isinstance(source, (str, os.PathLike)) else f"DICOM series {series.series_uid}"
    chosen = window if window is not None else series.window
    images = volume_slices(series.volume, axis=axis, slices=slices, window=chosen, where=where)
    if series.inverted:
        images = [Image.fromarray(255 - np.asarray(image), "L") for image in images]
    return images
