"""Reading one uploaded file for the demo page: PNG/JPEG (any PIL image), DICOM or NIfTI, bounded in size.

A file above :data:`MAX_UPLOAD_BYTES` (50 MB; ``MEDADAPT_DEMO_MAX_MB`` changes it) is refused
before it is read, and a file that is no image gets an :class:`~medadapt.errors.ImageError` saying
what the page accepts. A NIfTI volume gives its middle axial slice; a DICOM or NIfTI image is
windowed with the chosen window (``"default"``: the file's own, or its real range).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..errors import ImageError
from ..images import load_image
from ..medical import is_nifti, nifti_slices
from ..medical.dicom import is_dicom
from ..medical.windows import WINDOWS

MAX_UPLOAD_BYTES = int(float(os.environ.get("MEDADAPT_DEMO_MAX_MB", "50")) * (1 << 20))
DEFAULT_WINDOW = "default"
WINDOW_CHOICES = [DEFAULT_WINDOW, "full", *WINDOWS]  # "full": the values' real range
ACCEPTED = "PNG, JPEG (or another image PIL reads), DICOM (.dcm) or NIfTI (.nii / .nii.gz)"


@dataclass
class Upload:
    """One uploaded file read for the model: the image and what kind of file it was."""

    image: Image.Image
    kind: str  # "dicom", "nifti" or "image"


def read_upload(path: str | os.PathLike, window: str = DEFAULT_WINDOW) -> Upload:
    """The image in the uploaded file at ``path``; :class:`ImageError` with the reason otherwise."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(f"the upload could not be read: {exc}") from exc
    if size > MAX_UPLOAD_BYTES:
        raise ImageError(
            f"{path.name} is {size / (1 << 20):.1f} MB, above the demo's limit of {MAX_UPLOAD_BYTES / (1 << 20):.0f} MB "
            "(MEDADAPT_DEMO_MAX_MB); upload one image or slice."
        )
    chosen = None if window in (None, "", DEFAULT_WINDOW) else window
    if window not in WINDOW_CHOICES and window is not None:
        raise ImageError(f"unknown window {window!r}; choose one of {WINDOW_CHOICES}.")
    if is_nifti(str(path)):
        return Upload(nifti_slices(str(path), axis=2, slices="middle", window=chosen)[0], "nifti")
    if is_dicom(str(path)):
        return Upload(load_image(str(path), window=chosen), "dicom")
    try:
        image = load_image(str(path))
    except ImageError as exc:
        raise ImageError(f"{path.name} is not an image this demo reads ({ACCEPTED}): {exc}") from exc
    return Upload(image, "image")
