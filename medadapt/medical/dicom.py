"""DICOM images through pydicom (``pip install "medadapt[dicom]"``).

What a clinician's viewer does, in the same order:

1. decode the pixel data (JPEG, JPEG-LS, JPEG 2000 and RLE through the pylibjpeg plugins of the extra);
2. apply the Modality LUT / Rescale Slope and Intercept, so CT values are Hounsfield units;
3. apply a window: the user's (name or ``(center, width)``), else the file's own VOI LUT or
   Window Center/Width, else the real range of the values;
4. invert MONOCHROME1 (where the file says "high values are dark").

YBR colour data come back from pydicom as RGB, PALETTE COLOR through its lookup table.
Multi-frame files give one image per frame (:func:`dicom_frames`), or the frame you pick.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..errors import ImageError
from .extras import require_module
from .windows import WindowSpec, apply_window, resolve_window, stretch_to_uint8

__all__ = [
    "DICOM_EXTRA",
    "DICOM_SUFFIXES",
    "is_dicom",
    "read_dataset",
    "dicom_values",
    "dicom_frames",
    "read_dicom",
    "frame_count",
]

#: The install command named by every "pydicom or a decoder is missing" error.
DICOM_EXTRA = 'pip install "medadapt[dicom]"'
#: File suffixes read as DICOM even without the 128-byte preamble and "DICM" marker.
DICOM_SUFFIXES = (".dcm", ".dicom")

DicomSource = Any  # str | os.PathLike | bytes | pydicom.Dataset | binary file object


def _pydicom() -> Any:
    require_module("pydicom.pixels", "reading DICOM (with its decoders)", DICOM_EXTRA)
    return require_module("pydicom", "reading DICOM", DICOM_EXTRA)


def is_dicom(source: Any) -> bool:
    """True for a pydicom ``Dataset``, bytes or a file with the "DICM" marker, or a ``.dcm``/``.dicom`` path."""
    if type(source).__module__.startswith("pydicom") and hasattr(source, "file_meta"):
        return True
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[128:132]) == b"DICM"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix.lower() in DICOM_SUFFIXES:
            return True
        try:
            with open(path, "rb") as handle:
                head = handle.read(132)
        except OSError:
            return False
        return head[128:132] == b"DICM"
    return False


def _name(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"DICOM bytes ({len(source)} bytes)"
    filename = getattr(source, "filename", None)
    return str(filename) if isinstance(filename, (str, os.PathLike)) and filename else "DICOM dataset"


def read_dataset(source: DicomSource) -> Any:
    """Read ``source`` (path, bytes, file object or ``Dataset``) into a pydicom ``Dataset``.

    Raises :class:`ImageError` naming the file when it is missing, truncated or not DICOM.
    """
    pydicom = _pydicom()
    if isinstance(source, pydicom.Dataset):
        return source
    name = _name(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    try:
        return pydicom.dcmread(source, force=True)
    except FileNotFoundError as exc:
        raise ImageError(f"DICOM file not found: {name}") from exc
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for broken files
        raise ImageError(f"cannot read DICOM {name}: {type(exc).__name__}: {exc} (truncated or not a DICOM file?)") from exc


def frame_count(ds: Any) -> int:
    """Number of frames in a dataset with pixel data (1 when Number of Frames is absent)."""
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _check_decodable(ds: Any, name: str) -> None:
    pixels = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    if not any(tag in ds for tag in pixels):
        kind = ds.get("SOPClassUID")
        kind = getattr(kind, "name", kind) or ds.get("Modality") or "unknown kind"
        raise ImageError(
            f"{name} holds no pixel data ({kind}); it is not an image (a structured report, "
            "RT plan or waveform?), so it cannot be given to the model."
        )
    for tag in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"):
        if tag not in ds:
            raise ImageError(f"{name}: the DICOM header lacks {tag}, which is needed to decode its pixel data.")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not syntax.is_compressed:
        return
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise ImageError(f"{name}: pixel data compressed as {syntax.name} ({syntax}), for which pydicom has no decoder.") from exc
    if not decoder.is_available:
        raise ImageError(
            f"{name}: pixel data compressed as {syntax.name} ({syntax}), and no decoder for it is installed. "
            f"Install the DICOM extra with its decoders: {DICOM_EXTRA} "
            f"(pydicom's plugins say: {'; '.join(decoder.missing_dependencies) or 'none available'})."
        )


def _frame_indices(frames: int | Sequence[int] | None, n_frames: int, name: str) -> list[int]:
    if frames is None:
        return list(range(n_frames))
    wanted = [frames] if isinstance(frames, (int, np.integer)) else list(frames)
    for k in wanted:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ImageError(f"{name}: frame indices must be integers, got {k!r}.")
        if not -n_frames <= int(k) < n_frames:
            raise ImageError(f"{name}: frame {int(k)} is out of range; the file has {n_frames} frame(s) (0..{n_frames - 1}).")
    return [int(k) % n_frames for k in wanted]


def _decode(ds: Any, index: int | None, name: str) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        return pixel_array(ds, index=index)
    except Exception as exc:  # noqa: BLE001 - decoders raise ValueError, RuntimeError, OSError...
        raise ImageError(
            f"cannot decode the pixel data of {name}: {type(exc).__name__}: {exc} (is the file truncated?)"
        ) from exc


def dicom_values(source: DicomSource, frame: int | None = None) -> np.ndarray:
    """Pixel values after the Modality LUT (Hounsfield units for CT), for one frame or all.

    Greyscale data come back as float64 arrays ``(H, W)`` (or ``(F, H, W)`` with ``frame=None`` on a
    multi-frame file); colour data as decoded RGB. Raises :class:`ImageError` naming the file.
    """
    ds = read_dataset(source)
    name = _name(source)
    _check_decodable(ds, name)
    n_frames = frame_count(ds)
    index = None if frame is None else _frame_indices(frame, n_frames, name)[0]
    values = _decode(ds, index if n_frames > 1 else None, name)
    if int(ds.get("SamplesPerPixel", 1) or 1) == 1 and "PALETTE" not in str(ds.PhotometricInterpretation).upper():
        from pydicom.pixels import apply_modality_lut

        values = np.asarray(apply_modality_lut(values, ds), dtype=np.float64)
    return values


def _grey(values: np.ndarray, ds: Any, window: WindowSpec, name: str) -> np.ndarray:
    """Modality-LUT values -> uint8 through the user's window, the file's own, or the real range."""
    if window is not None:
        resolved = resolve_window(window)
        if resolved is None:  # "full"
            return stretch_to_uint8(values, name)
        return apply_window(values, resolved, name)
    if "VOILUTSequence" in ds:
        from pydicom.pixels import apply_voi_lut

        lut = ds.VOILUTSequence[0]
        bits = int(lut.LUTDescriptor[2])
        out = np.asarray(apply_voi_lut(values, ds, index=0, prefer_lut=True), dtype=np.float64)
        return np.round(np.clip(out / (2**bits - 1), 0.0, 1.0) * 255.0).astype(np.uint8)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = ds.WindowCenter, ds.WindowWidth
        center = float(center[0] if isinstance(center, Sequence) and not isinstance(center, str) else center)
        width = float(width[0] if isinstance(width, Sequence) and not isinstance(width, str) else width)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR")
        if width >= 1.0:
            return apply_window(values, (center, width), name, function=function)
    return stretch_to_uint8(values, name)


def _colour(values: np.ndarray, ds: Any, name: str) -> np.ndarray:
    interpretation = str(ds.PhotometricInterpretation).upper()
    if "PALETTE" in interpretation:
        from pydicom.pixels import apply_color_lut

        try:
            rgb = np.asarray(apply_color_lut(values, ds))
        except Exception as exc:  # noqa: BLE001
            raise ImageError(f"{name}: cannot apply its palette colour lookup table: {exc}") from exc
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return np.round(rgb.astype(np.float64) * (255.0 / (2**bits - 1))).clip(0, 255).astype(np.uint8)
    if values.dtype == np.uint8:
        return values
    bits = int(ds.get("BitsStored", ds.BitsAllocated))
    return np.round(values.astype(np.float64) * (255.0 / (2**bits - 1))).clip(0, 255).astype(np.uint8)


def dicom_frames(source: DicomSource, window: WindowSpec = None, frames: int | Sequence[int] | None = None) -> list[Image.Image]:
    """Read a DICOM file (path, bytes or pydicom ``Dataset``) as display-ready PIL images, one per frame.

    ``window``: ``None`` uses the file's own VOI LUT or window (else the real range); a name from
    :data:`medadapt.medical.WINDOWS` (e.g. ``"lung"``), ``(center, width)`` in HU, or ``"full"``.
    ``frames``: ``None`` for all frames, an index, or a list of indices.
    Greyscale frames come back as mode ``"L"`` (MONOCHROME1 inverted), colour as ``"RGB"``.
    Without a window, frames read together share one intensity range.
    """
    resolve_window(window)  # an unknown name fails before any decoding
    ds = read_dataset(source)
    name = _name(source)
    _check_decodable(ds, name)
    n_frames = frame_count(ds)
    indices = _frame_indices(frames, n_frames, name)
    raw = [_decode(ds, k if n_frames > 1 else None, name) for k in indices]
    interpretation = str(ds.PhotometricInterpretation).upper()
    colour = int(ds.get("SamplesPerPixel", 1) or 1) > 1 or "PALETTE" in interpretation
    if colour:
        if window is not None:
            raise ImageError(f"{name}: a window applies to greyscale images; this one is {interpretation}.")
        return [Image.fromarray(_colour(v, ds, name), "RGB") for v in raw]
    from pydicom.pixels import apply_modality_lut

    values = np.stack([np.asarray(apply_modality_lut(v, ds), dtype=np.float64) for v in raw])
    grey = _grey(values, ds, window, name)
    if interpretation == "MONOCHROME1":
        grey = 255 - grey
    return [Image.fromarray(g, "L") for g in grey]


def read_dicom(source: DicomSource, window: WindowSpec = None, frame: int | None = None) -> Image.Image:
    """One display-ready image from a DICOM file; a multi-frame file needs ``frame`` (see :func:`dicom_frames`)."""
    if frame is None:
        ds = read_dataset(source)
        n_frames = frame_count(ds)
        if n_frames > 1:
            raise ImageError(
                f"{_name(source)} holds {n_frames} frames, not one image: pick one with "
                f"medadapt.medical.read_dicom(path, frame=k), or read them all with "
                f"medadapt.medical.dicom_frames(path) and pass the list."
            )
        source = ds
        return dicom_frames(source, window=window)[0]
    return dicom_frames(source, window=window, frames=[frame])[0]

