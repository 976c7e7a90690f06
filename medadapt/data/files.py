"""Image files on disk (PNG, JPEG, TIFF, BMP, DICOM) as a lazily read, checked dataset column.

Used by the ``imagefolder`` and ``dicom`` formats. Every file is decoded once when the domain is
loaded, so a corrupt file is reported (by name) before training starts, not in the middle of it;
``options: {on_bad_file: skip}`` leaves such files out instead and warns with their count.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..errors import ImageError, MissingExtraError
from ..images import load_image
from ..medical.windows import WindowSpec, resolve_window
from .base import DataError

__all__ = ["ImageFiles", "BadFilesWarning", "FileOptions", "check_files"]

ON_BAD_FILE = ("error", "skip")


class BadFilesWarning(UserWarning):
    """Some files of a domain could not be read and were skipped (``on_bad_file: skip``)."""


class FileOptions:
    """How a domain's image files are read: ``window``, ``frame`` (multi-frame DICOM), ``on_bad_file``, ``check_files``."""

    KEYS = ("window", "frame", "on_bad_file", "check_files")

    def __init__(self, domain: str, options: dict[str, Any], extra_keys: Sequence[str] = ()) -> None:
        unknown = sorted(set(options) - set(self.KEYS) - set(extra_keys))
        if unknown:
            raise DataError(f"domain {domain!r}: unknown data option(s) {unknown}; valid: {sorted(set(self.KEYS) | set(extra_keys))}")
        window = options.get("window")
        if isinstance(window, list):
            window = tuple(window)
        try:
            resolve_window(window)
        except ImageError as exc:
            raise DataError(f"domain {domain!r}: data option 'window': {exc}") from exc
        frame = options.get("frame")
        if frame is not None and (isinstance(frame, bool) or not isinstance(frame, int)):
            raise DataError(f"domain {domain!r}: data option 'frame' must be an integer frame index, got {frame!r}")
        on_bad = options.get("on_bad_file", "error")
        if on_bad not in ON_BAD_FILE:
            raise DataError(f"domain {domain!r}: data option 'on_bad_file' must be one of {list(ON_BAD_FILE)}, got {on_bad!r}")
        check = options.get("check_files", True)
        if not isinstance(check, bool):
            raise DataError(f"domain {domain!r}: data option 'check_files' must be true or false, got {check!r}")
        self.window: WindowSpec = window
        self.frame: int | None = frame
        self.on_bad_file: str = on_bad
        self.check_files: bool = check


class ImageFiles:
    """Image files read lazily (with a window / frame for DICOM); items are PIL images.

    A file that cannot be read raises :class:`DataError` naming it.
    """

    def __init__(self, paths: Sequence[str | Path], window: WindowSpec = None, frame: int | None = None) -> None:
        self.paths = [str(p) for p in paths]
        self.window = window
        self.frame = frame

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, path: str) -> Image.Image:
        """Read one file as a PIL image, or raise :class:`DataError` naming it."""
        try:
            return load_image(path, window=self.window, frame=self.frame)
        except MissingExtraError:
            raise
        except ImageError as exc:
            raise DataError(f"cannot read image file {path}: {str(exc).removeprefix('image 0: ')}") from exc

    def __getitem__(self, i: int) -> Image.Image:
        return self.read(self.paths[int(i)])

    def subset(self, indices: np.ndarray) -> "ImageFiles":
        """The files at ``indices`` (same reading options)."""
        return ImageFiles([self.paths[int(k)] for k in indices], self.window, self.frame)


def check_files(
    files: ImageFiles, labels: np.ndarray, options: FileOptions, domain: str, split: str
) -> tuple[ImageFiles, np.ndarray]:
    """Decode every file once; a bad one raises :class:`DataError` (or is skipped, with a warning)."""
    if not options.check_files:
        return files, labels
    bad: list[tuple[int, str]] = []
    for k, path in enumerate(files.paths):
        try:
            files.read(path)
        except DataError as exc:
            bad.append((k, str(exc)))
    if not bad:
        return files, labels
    first = bad[0][1]
    if options.on_bad_file == "error":
        raise DataError(
            f"domain {domain!r} split {split!r}: {len(bad)} of {len(files)} image file(s) cannot be read; first: {first}. "
            "Fix or remove them, or set the data option on_bad_file: skip to leave them out."
        )
    keep = np.setdiff1d(np.arange(len(files)), [k for k, _ in bad])
    warnings.warn(
        f"domain {domain!r} split {split!r}: skipped {len(bad)} of {len(files)} image file(s) that cannot be read "
        f"(on_bad_file: skip); first: {first}",
        BadFilesWarning,
        stacklevel=2,
    )
    return files.subset(keep), labels[keep]
