"""Turn user images into RGB PIL images: PIL, numpy, torch, file paths, encoded bytes, DICOM.

Every image then goes through the base model's own image processor, so resizing and normalisation
match what the model was trained with.

Intensities: ``uint8`` data are read as they are; ``bool`` as 0/255; floats in ``[0, 1]`` times 255.
Every other greyscale input (16-bit PNG/TIFF in PIL modes ``I;16``/``I``/``F``, ``uint16``/``int16``/
float arrays, ...) is stretched from its real minimum to its real maximum, or mapped through the
``window`` you give (see :mod:`medadapt.medical.windows`), never clipped at 255. DICOM files use
their own window (see :mod:`medadapt.medical.dicom`). NaN or infinite values are an error.

A 3D array that is neither ``(H, W, 1|3|4)`` nor ``(1|3|4, H, W)`` is refused: it may be a volume or a
stack of greyscale images, and only you know which (``medadapt.medical.volume_slices`` or ``list(x)``).
Colour is read only from ``uint8``, ``bool`` and float arrays; a wider integer ``(3, H, W)`` is far more
often three CT slices than an RGB image, so it is refused too.

PIL refuses images over twice ``PIL.Image.MAX_IMAGE_PIXELS`` (about 179 million pixels) as possible
decompression bombs; medadapt reports that as an :class:`ImageError`. To read a larger image you
trust, raise the limit first: ``PIL.Image.MAX_IMAGE_PIXELS = 400_000_000`` (``None`` disables it).
"""

from __future__ import annotations

import io
import os
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import ImageError
from .medical import dicom, nifti
from .medical.windows import WindowSpec, apply_window, resolve_window, scale_to_uint8

ImageInput = Any  # PIL.Image | np.ndarray | torch.Tensor | str | os.PathLike | bytes | pydicom.Dataset

__all__ = ["ImageInput", "load_image", "to_rgb", "preprocess", "model_input_image"]

_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F", "L", "1")
_SLICING_HINT = (
    "If it is a volume, take 2D slices with medadapt.medical.volume_slices(array, axis=..., slices=...) "
    "(or nifti_slices / dicom_frames for files); if it is a batch of greyscale images, pass list(array)."
)


def _bomb_error(where: str, what: str, exc: Exception) -> ImageError:
    return ImageError(
        f"{where}: {what} is larger than PIL's decompression-bomb limit ({exc}). If you trust it, raise the "
        "limit before loading: PIL.Image.MAX_IMAGE_PIXELS = <pixels> (None disables the check)."
    )


def _open_pil(source: Any, where: str, what: str) -> Image.Image:
    try:
        with Image.open(source) as handle:
            handle.load()
            return handle.copy()
    except Image.DecompressionBombError as exc:
        raise _bomb_error(where, what, exc) from exc
    except FileNotFoundError as exc:
        raise ImageError(f"{where}: file not found: {source}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{where}: cannot decode {what}: {exc}") from exc


def _colour_to_uint8(array: np.ndarray, where: str, shape: tuple[int, ...]) -> np.ndarray:
    """(H, W, 3|4) colour values as uint8: uint8 as is, bool 0/255, floats in [0, 1] or [0, 255]."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if not np.issubdtype(array.dtype, np.floating):
        raise ImageError(
            f"{where}: {array.dtype} array of shape {shape} is not read as a colour image (colour comes "
            "from uint8 or float arrays; a wider integer stack is usually CT/MR slices). For an RGB image, "
            f"convert it: array.astype(numpy.uint8). {_SLICING_HINT}"
        )
    if not np.isfinite(array).all():
        raise ImageError(f"{where}: image contains NaN or infinite values; replace them (e.g. numpy.nan_to_num).")
    low, high = float(array.min(initial=0.0)), float(array.max(initial=0.0))
    if low >= 0.0 and high <= 1.0:
        return np.round(array * 255.0).astype(np.uint8)
    if low >= 0.0 and high <= 255.0:
        return np.round(array).astype(np.uint8)
    raise ImageError(
        f"{where}: float array of shape {shape} has values {low:g}..{high:g}, outside [0, 1] and [0, 255], "
        f"so it is not a colour image. {_SLICING_HINT}"
    )


def _array_to_pil(array: np.ndarray, where: str, window: WindowSpec = None) -> Image.Image:
    shape = tuple(array.shape)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    elif array.ndim == 3 and array.shape[0] == 1 and array.shape[-1] not in (3, 4):
        array = array[0]
    if array.ndim == 2:
        if array.shape[0] < 1 or array.shape[1] < 1:
            raise ImageError(f"{where}: image has an empty side, shape {shape}.")
        grey = scale_to_uint8(array, where) if window is None else apply_window(array, window, where)
        return Image.fromarray(np.ascontiguousarray(grey), "L")
    if array.ndim != 3:
        raise ImageError(
            f"{where}: array of shape {shape} is not an image; expected (H, W), (H, W, 1|3|4) or (1|3|4, H, W)."
        )
    if array.shape[-1] not in (3, 4) and array.shape[0] in (3, 4):
        array = np.moveaxis(array, 0, -1)  # CHW -> HWC
    if array.shape[-1] not in (3, 4):
        raise ImageError(
            f"{where}: array of shape {shape} is not an image; expected (H, W), (H, W, 1|3|4) or (1|3|4, H, W). "
            + _SLICING_HINT
        )
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError(f"{where}: image has an empty side, shape {shape}.")
    if window is not None:
        raise ImageError(f"{where}: a window applies to greyscale images; this one has {array.shape[-1]} channels.")
    colour = _colour_to_uint8(array, where, shape)
    return Image.fromarray(np.ascontiguousarray(colour), "RGB" if colour.shape[-1] == 3 else "RGBA")


def _is_pydicom_dataset(image: Any) -> bool:
    return type(image).__module__.startswith("pydicom") and hasattr(image, "file_meta")


def load_image(image: ImageInput, index: int = 0, window: WindowSpec = None, frame: int | None = None) -> Image.Image:
    """Read any accepted input as a display-ready PIL image (mode ``"L"``, ``"RGB"``, ``"RGBA"`` or PIL's own).

    ``window`` (a name such as ``"lung"`` or ``(center, width)``) maps greyscale values to grey levels;
    ``frame`` picks one frame of a multi-frame DICOM. Raises :class:`ImageError` naming the problem.
    """
    where = f"image {index}"
    resolve_window(window)
    if isinstance(image, (str, os.PathLike)):
        if not os.path.exists(image):
            raise ImageError(f"{where}: file not found: {image}")
        if dicom.is_dicom(image):
            return _located(lambda: dicom.read_dicom(image, window=window, frame=frame), where)
        if nifti.is_nifti(image):
            raise ImageError(
                f"{where}: {image} is a NIfTI volume, not one 2D image; take slices with "
                "medadapt.medical.nifti_slices(path, axis=2, slices='middle' | 'all' | [indices], window=...)."
            )
        image = _open_pil(image, where, f"image file {image}")
    elif isinstance(image, (bytes, bytearray, memoryview)):
        if dicom.is_dicom(image):
            return _located(lambda: dicom.read_dicom(bytes(image), window=window, frame=frame), where)
        image = _open_pil(io.BytesIO(bytes(image)), where, f"image bytes ({len(image)} bytes)")
    elif _is_pydicom_dataset(image):
        return _located(lambda: dicom.read_dicom(image, window=window, frame=frame), where)
    elif isinstance(image, dict) and (image.get("bytes") is not None or image.get("path")):  # an undecoded datasets Image
        return load_image(image["bytes"] if image.get("bytes") is not None else image["path"], index, window=window, frame=frame)
    elif nifti.is_nifti(image):
        raise ImageError(f"{where}: a NIfTI volume is not one 2D image; take slices with medadapt.medical.nifti_slices(image, ...).")
    elif isinstance(image, torch.Tensor):
        return _array_to_pil(image.detach().cpu().numpy(), where, window)
    elif isinstance(image, np.ndarray):
        return _array_to_pil(image, where, window)
    if not isinstance(image, Image.Image):
        raise ImageError(
            f"{where}: unsupported type {type(image).__name__}; pass PIL, numpy, torch, a path, bytes or a pydicom Dataset."
        )
    if image.width < 1 or image.height < 1:
        raise ImageError(f"{where}: PIL image of size {image.width}x{image.height} has an empty side.")
    if image.mode in _GREY_MODES and (window is not None or image.mode not in ("L", "1")):
        return _array_to_pil(np.asarray(image), where, window)
    if window is not None:
        raise ImageError(f"{where}: a window applies to greyscale images; this one is mode {image.mode!r}.")
    return image


def _located(read: Any, where: str) -> Image.Image:
    try:
        return read()
    except ImageError as exc:
        raise ImageError(f"{where}: {exc}") from exc


def to_rgb(image: ImageInput, index: int = 0, window: WindowSpec = None, frame: int | None = None) -> Image.Image:
    """Return ``image`` as an RGB PIL image, or raise :class:`ImageError` naming what is wrong."""
    image = load_image(image, index, window=window, frame=frame)
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(f"image {index}: cannot convert mode {image.mode!r} to RGB: {exc}") from exc


def _is_single(images: Any) -> bool:
    """One image (not a collection of them): PIL, a path, bytes, a pydicom Dataset, an image dict, a single array."""
    if isinstance(images, (Image.Image, str, os.PathLike, bytes, bytearray, memoryview)) or _is_pydicom_dataset(images):
        return True
    if isinstance(images, dict):
        return True
    if isinstance(images, (torch.Tensor, np.ndarray)):
        return not _is_batch(tuple(images.shape))
    return nifti.is_nifti(images)


def image_list(images: Any) -> list[Any]:
    """``images`` as a list of single images.

    Accepts one image, a list/tuple, a 4-D array or tensor (a batch), and any other iterable of images:
    a ``datasets`` column (``ds["image"]``, datasets 4's lazy ``Column``), a generator, a pandas Series.
    Iterating a whole ``datasets.Dataset`` gives rows (dicts), so a dataset must be passed as its image column.
    """
    if isinstance(images, list):
        return images
    if isinstance(images, tuple):
        return list(images)
    if _is_single(images):
        return [images]
    if isinstance(images, (torch.Tensor, np.ndarray)):
        return list(images)
    if type(images).__module__.startswith("datasets") and hasattr(images, "column_names") and not hasattr(images, "__array__"):
        raise ImageError(f"got a whole datasets {type(images).__name__} (columns {images.column_names}); pass its image column, e.g. ds['image'].")
    try:
        return list(iter(images))
    except TypeError:
        raise ImageError(f"unsupported images {type(images).__name__}; pass one image, a list, a batch array, or any iterable of images (e.g. ds['image'])") from None


def _is_batch(shape: tuple[int, ...]) -> bool:
    """A 4-D array holds several images; 3-D arrays are one image (or refused as a volume)."""
    return len(shape) == 4


def preprocess(images: Sequence[ImageInput] | ImageInput, image_processor: Any) -> torch.Tensor:
    """Convert images with ``to_rgb`` and run the base model's image processor; returns pixel values."""
    if not isinstance(images, (list, tuple)):
        if isinstance(images, (torch.Tensor, np.ndarray)) and _is_batch(images.shape):
            images = list(images)
        else:
            images = [images]
    if len(images) == 0:
        raise ImageError("no images given (empty list).")
    rgb = [to_rgb(image, i) for i, image in enumerate(images)]
    return image_processor(images=rgb, return_tensors="pt")["pixel_values"]


def model_input_image(
    image: ImageInput, image_processor: Any, window: WindowSpec = None, frame: int | None = None
) -> Image.Image:
    """The image as the model receives it (windowed, converted, resized, cropped), back in display range.

    Runs :func:`to_rgb` and the base model's ``image_processor``, then undoes the processor's
    normalisation (``image_mean`` / ``image_std``) so a person can look at the result.
    """
    pixels = image_processor(images=[to_rgb(image, window=window, frame=frame)], return_tensors="pt")["pixel_values"][0]
    while pixels.dim() > 3:  # tiled processors (Idefics3): (tiles, C, H, W); show the first tile
        pixels = pixels[0]
    mean = torch.tensor(getattr(image_processor, "image_mean", None) or [0.0, 0.0, 0.0], dtype=pixels.dtype).view(-1, 1, 1)
    std = torch.tensor(getattr(image_processor, "image_std", None) or [1.0, 1.0, 1.0], dtype=pixels.dtype).view(-1, 1, 1)
    values = (pixels * std + mean).clamp(0.0, 1.0)
    array = np.round(values.permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)
    return Image.fromarray(array, "RGB")
