"""DICOM images through pydicom (``pip install "medadapt[dicom]"``).

What a clinician's viewer does, in the same order:

1. decode the pixel data (JPEG, JPEG-LS, JPEG 2000 and RLE through the pylibjpeg plugins of the extra);
2. apply the Modality LUT / Rescale Slope and Intercept, so CT values are Hounsfield units;
3. apply a window: the user's (name or ``(center, width)``), else the file's own VOI LUT
   (``pydicom.pixels.apply_voi``) or Window Center/Width, else the real range of the values;
4. apply the Presentation LUT: a Presentation LUT Sequence through ``pydicom.pixels.apply_presentation_lut``;
   ``PresentationLUTShape = INVERSE`` or MONOCHROME1 ("high values are dark") inverts, once, so the
   highest value is black as in pydicom.

Header values that cannot be numbers (Window Width, Rescale Slope...), a transfer syntax UID that is
not one, and a VOI LUT whose descriptor is outside what DICOM allows are :class:`ImageError` naming the
field. Before anything is decoded, the header's frame size is checked against PIL's decompression-bomb
limit (:func:`check_pixel_budget`): a frame over ``2 * PIL.Image.MAX_IMAGE_PIXELS`` pixels (about 179
million), or a whole-file decode over that many pixels in all, is refused. Raise
``PIL.Image.MAX_IMAGE_PIXELS`` (``None`` disables it) to read a larger file you trust.

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
    "header_number",
    "check_pixel_budget",
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


def header_number(ds: Any, keyword: str, name: str, fix: str, index: int = 0) -> float | None:
    """The ``index``-th value of the numeric header field ``keyword`` as a finite float (``None`` when absent).

    Raises :class:`ImageError` naming the file, the field, its value and ``fix`` when it is not a finite number.
    """
    if keyword not in ds:
        return None
    try:
        value = ds[keyword].value
    except Exception as exc:  # noqa: BLE001 - pydicom converts on access and may raise
        raise ImageError(f"{name}: its {keyword} cannot be read ({exc}); {fix}") from exc
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        if not len(value):
            raise ImageError(f"{name}: its {keyword} is empty; {fix}")
        value = value[min(index, len(value) - 1)]
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number):
        raise ImageError(f"{name}: its {keyword} is {value!r}, not a finite number; {fix}")
    return number


def check_pixel_budget(ds: Any, name: str, frames: int = 1) -> None:
    """Refuse, before decoding, a header whose decoded size is over PIL's decompression-bomb limit.

    One frame (Rows x Columns) and the ``frames`` decoded together may each hold at most
    ``2 * PIL.Image.MAX_IMAGE_PIXELS`` pixels (the size at which PIL itself refuses an image);
    ``PIL.Image.MAX_IMAGE_PIXELS = None`` disables the check.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None:
        return
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (TypeError, ValueError) as exc:
        raise ImageError(f"{name}: Rows/Columns in the header are not integers ({exc}).") from exc
    if rows < 1 or columns < 1:
        raise ImageError(f"{name}: the header says the image is {rows}x{columns} pixels; it has an empty side.")
    pixels = rows * columns * max(1, frames)
    if pixels > 2 * limit:
        what = f"{rows}x{columns} pixels" + (f" x {frames} frames" if frames > 1 else "")
        raise ImageError(
            f"{name}: the header says its pixel data decode to {what} ({pixels:,} pixels), over the decompression-bomb "
            f"limit of 2 x PIL.Image.MAX_IMAGE_PIXELS = {2 * limit:,}; it was not decoded. If you trust the file, raise "
            "the limit first: PIL.Image.MAX_IMAGE_PIXELS = <pixels> (None disables the check)"
            + ("; or read one frame at a time (frame=k)." if frames > 1 else ".")
        )


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
    check_pixel_budget(ds, name)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None:
        return
    try:
        compressed = syntax.is_compressed
    except ValueError as exc:  # pydicom: "UID is not a transfer syntax"
        raise ImageError(
            f"{name}: its transfer syntax UID {str(syntax)!r} is not a DICOM transfer syntax pydicom knows, so its pixel "
            "data cannot be decoded (a private or corrupted header). Convert the file to a standard syntax "
            "(e.g. `gdcmconv --raw` or dcmtk's `dcmdjpeg`/`dcmconv +te`)."
        ) from exc
    if not compressed:
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
    if index is None and n_frames > 1:
        check_pixel_budget(ds, name, n_frames)
    values = _decode(ds, index if n_frames > 1 else None, name)
    if int(ds.get("SamplesPerPixel", 1) or 1) == 1 and "PALETTE" not in str(ds.PhotometricInterpretation).upper():
        values = _modality(values, ds, name)
    return values


def _modality(values: np.ndarray, ds: Any, name: str) -> np.ndarray:
    """``pydicom.pixels.apply_modality_lut`` as float64, after checking the rescale fields are numbers."""
    from pydicom.pixels import apply_modality_lut

    fix = "correct the header (e.g. with pydicom) before reading the file; the values would not be in the modality's units."
    header_number(ds, "RescaleSlope", name, fix)
    header_number(ds, "RescaleIntercept", name, fix)
    try:
        return np.asarray(apply_modality_lut(values, ds), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - a broken Modality LUT Sequence raises many types
        raise ImageError(f"{name}: cannot apply its Modality LUT: {type(exc).__name__}: {exc}") from exc


#: Bits per VOI LUT entry that DICOM allows (PS3.3 C.11.2.1.1; pydicom also accepts 10 to 15).
VOI_LUT_BITS = (8, *range(10, 17))
_OWN_WINDOW_FIX = (
    "pass a window to display it without the file's own: window='full' (the real range), a name such as 'lung', "
    "or (center, width) (`--window` for medadapt show)."
)


def _file_voi_lut(values: np.ndarray, ds: Any, name: str) -> np.ndarray:
    """The file's first VOI LUT through ``pydicom.pixels.apply_voi``, scaled from its entry range to 0..1."""
    from pydicom.pixels import apply_voi

    lut = ds.VOILUTSequence[0]
    try:
        entries, _, bits = (int(v) for v in lut.LUTDescriptor)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageError(f"{name}: its VOI LUT has no valid LUT Descriptor (three integers) ({exc}); {_OWN_WINDOW_FIX}") from exc
    if bits not in VOI_LUT_BITS:
        raise ImageError(
            f"{name}: its VOI LUT descriptor says {bits} bits per entry; DICOM allows 8 or 10 to 16, so the file's own "
            f"VOI LUT cannot be applied; {_OWN_WINDOW_FIX}"
        )
    integral = values if np.issubdtype(values.dtype, np.integer) else np.rint(values).astype(np.int64)
    try:
        out = np.asarray(apply_voi(integral, ds, index=0), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - short LUT data, bad endianness...
        raise ImageError(f"{name}: cannot apply its VOI LUT: {type(exc).__name__}: {exc}; {_OWN_WINDOW_FIX}") from exc
    return np.clip(out / (2**bits - 1), 0.0, 1.0)


def _presentation(grey: np.ndarray, ds: Any, name: str) -> np.ndarray:
    """The Presentation LUT on 0..255 grey levels: a LUT Sequence through pydicom, INVERSE or MONOCHROME1 inverts."""
    interpretation = str(ds.PhotometricInterpretation).upper()
    if "PresentationLUTSequence" in ds:
        from pydicom.pixels import apply_presentation_lut

        try:
            bits = int(ds.PresentationLUTSequence[0].LUTDescriptor[2])
            out = np.asarray(apply_presentation_lut(grey, ds), dtype=np.float64)
        except Exception as exc:  # noqa: BLE001
            raise ImageError(f"{name}: cannot apply its Presentation LUT Sequence: {type(exc).__name__}: {exc}") from exc
        if not 1 <= bits <= 16:
            raise ImageError(f"{name}: its Presentation LUT descriptor says {bits} bits per entry; DICOM allows 10 to 16.")
        grey = np.round(np.clip(out / (2**bits - 1), 0.0, 1.0) * 255.0).astype(np.uint8)
        return 255 - grey if interpretation == "MONOCHROME1" else grey
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    if shape not in ("", "IDENTITY", "INVERSE"):
        raise ImageError(f"{name}: unknown Presentation LUT Shape {shape!r}; DICOM defines IDENTITY and INVERSE.")
    return 255 - grey if shape == "INVERSE" or interpretation == "MONOCHROME1" else grey


def _grey(values: np.ndarray, ds: Any, window: WindowSpec, name: str) -> np.ndarray:
    """Modality-LUT values -> uint8 through the user's window, the file's own, or the real range."""
    if window is not None:
        resolved = resolve_window(window)
        if resolved is None:  # "full"
            return stretch_to_uint8(values, name)
        return apply_window(values, resolved, name)
    if ds.get("VOILUTSequence"):
        return np.round(_file_voi_lut(values, ds, name) * 255.0).astype(np.uint8)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center = header_number(ds, "WindowCenter", name, _OWN_WINDOW_FIX)
        width = header_number(ds, "WindowWidth", name, _OWN_WINDOW_FIX)
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
    Greyscale frames come back as mode ``"L"`` (inverted once for MONOCHROME1 or Presentation LUT Shape
    INVERSE), colour as ``"RGB"``.
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
    values = np.stack([_modality(v, ds, name) for v in raw])
    grey = _presentation(_grey(values, ds, window, name), ds, name)
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

