"""Turn user images (PIL, numpy, torch, file paths or encoded bytes) into RGB PIL images.

Every image then goes through the base model's own image processor, so resizing and normalisation
match what the model was trained with.
"""

from __future__ import annotations

import io
import os
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import ImageError

ImageInput = Any  # PIL.Image | np.ndarray | torch.Tensor | str | os.PathLike | bytes


def _array_to_pil(array: np.ndarray, where: str) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageError(
            f"{where}: array of shape {tuple(array.shape)} is not an image; expected (H, W), (H, W, 1|3|4) "
            "or (1|3|4, H, W)."
        )
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError(f"{where}: image has an empty side, shape {tuple(array.shape)}.")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError(f"{where}: image contains NaN or infinite values.")
        scale = 255.0 if array.max(initial=0.0) <= 1.0 else 1.0
        array = np.clip(array * scale, 0, 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        high = float(array.max(initial=0))
        array = (array.astype(np.float64) * (255.0 / high if high > 255 else 1.0)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(array)


def to_rgb(image: ImageInput, index: int = 0) -> Image.Image:
    """Return ``image`` as an RGB PIL image, or raise :class:`ImageError` naming what is wrong."""
    where = f"image {index}"
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as handle:
                handle.load()
                image = handle.copy()
        except FileNotFoundError as exc:
            raise ImageError(f"{where}: file not found: {image}") from exc
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise ImageError(f"{where}: cannot decode image file {image}: {exc}") from exc
    elif isinstance(image, (bytes, bytearray)):
        try:
            with Image.open(io.BytesIO(image)) as handle:
                handle.load()
                image = handle.copy()
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise ImageError(f"{where}: cannot decode image bytes ({len(image)} bytes): {exc}") from exc
    elif isinstance(image, torch.Tensor):
        image = _array_to_pil(image.detach().cpu().numpy(), where)
    elif isinstance(image, np.ndarray):
        image = _array_to_pil(image, where)
    if not isinstance(image, Image.Image):
        raise ImageError(f"{where}: unsupported type {type(image).__name__}; pass PIL, numpy, torch, a path or bytes.")
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        span = array.max() - array.min()
        array = (array - array.min()) / (span if span > 0 else 1.0) * 255.0
        image = Image.fromarray(array.astype(np.uint8))
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(f"{where}: cannot convert mode {image.mode!r} to RGB: {exc}") from exc


def _is_batch(shape: tuple[int, ...]) -> bool:
    """A 4-D array, or a 3-D one that is neither HWC nor CHW, holds several images."""
    if len(shape) == 4:
        return True
    return len(shape) == 3 and shape[-1] not in (1, 3, 4) and shape[0] not in (1, 3, 4)


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
