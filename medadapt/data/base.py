"""Core data containers: :class:`ImageLabelDataset`, :class:`DataConfig`, :class:`DomainData`.

Errors raised by the data layer are :class:`DataError` (a ``MedAdaptError`` and a
``ValueError``) or :class:`DataNotFoundError` (both a ``DataError`` and a
``FileNotFoundError``), so callers can catch every data problem with ``except DataError``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch.utils.data
from PIL import Image

from ..errors import DataError, DataNotFoundError
from .registry import registered_formats
from .synthetic import validate_synthetic_options

__all__ = [
    "DataError",
    "DataNotFoundError",
    "ImageLabelDataset",
    "DataConfig",
    "DomainData",
    "BUILTIN_FORMATS",
]

#: Keys of ``DataConfig.columns``: image and label (``hf``), question and answer (``vqa``), split (a column
#: naming each row's split, for one table holding every split).
COLUMN_KEYS = ("image", "label", "question", "answer", "split")
#: Formats shipped with medadapt (more can be added with ``register_loader``).
BUILTIN_FORMATS = ("npz", "imagefolder", "hf", "vqa", "vqa_rad_organ", "vqa_rad", "synthetic", "dicom")


class ImageLabelDataset(torch.utils.data.Dataset):
    """Images plus integer labels, indexed as ``(image, label)``.

    ``images`` is one of:

    * an in-memory ``uint8`` array of shape ``(N, H, W)`` or ``(N, H, W, C)``; items are
      returned as ``(H, W)`` / ``(H, W, C)`` uint8 arrays (views, do not modify them);
    * a list of image file paths, opened lazily with PIL; items are ``PIL.Image`` objects
      in the file's own mode (e.g. ``"L"`` or ``"RGB"``; convert downstream as needed);
    * any other lazily indexed sequence (``__len__`` + ``__getitem__``), e.g. a Hugging
      Face column wrapper; items are whatever it returns (a PIL image or an array).

    ``labels`` is stored as an ``int64`` array of shape ``(N,)`` in ``self.labels``.
    """

    def __init__(self, images: Any, labels: Sequence[int] | np.ndarray) -> None:
        labels_arr = np.asarray(labels)
        if labels_arr.ndim != 1:
            raise DataError(f"labels must be 1-D (N,), got shape {labels_arr.shape}")
        if labels_arr.size and not np.issubdtype(labels_arr.dtype, np.integer):
            if not np.all(np.equal(np.mod(labels_arr, 1), 0)):
                raise DataError(f"labels must be integers, got dtype {labels_arr.dtype}")
        self.labels: np.ndarray = labels_arr.astype(np.int64, copy=False)

        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8:
                raise DataError(f"image array must be uint8, got dtype {images.dtype}")
            if images.ndim not in (3, 4):
                raise DataError(
                    f"image array must have shape (N,H,W) or (N,H,W,C), got {images.shape}"
                )
            self.kind = "array"
        elif isinstance(images, (list, tuple)) and all(
            isinstance(p, (str, Path)) for p in images
        ):
            images = [str(p) for p in images]
            self.kind = "files"
        elif hasattr(images, "__len__") and hasattr(images, "__getitem__"):
            self.kind = "lazy"
        else:
            raise DataError(
                "images must be a uint8 numpy array, a list of file paths or an indexable "
                f"sequence, got {type(images).__name__}"
            )
        if len(images) != len(self.labels):
            raise DataError(
                f"{len(images)} images but {len(self.labels)} labels: counts must match"
            )
        self.images = images

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        """Return ``(image, label)`` for sample ``i`` (negative indices allowed)."""
        n = len(self)
        idx = int(i)
        if idx < -n or idx >= n:
            raise IndexError(f"index {i} out of range for dataset of {n} samples")
        idx %= n
        label = int(self.labels[idx])
        if self.kind == "array":
            return self.images[idx], label
        if self.kind == "files":
            return open_image(self.images[idx]), label
        return self.images[idx], label

    def subset(self, indices: Sequence[int] | np.ndarray) -> "ImageLabelDataset":
        """Return a new dataset holding the samples at ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"subset indices must lie in [0, {n}), got min {idx.min()} max {idx.max()}")
        labels = self.labels[idx]
        if self.kind == "array":
            images: Any = self.images[idx]
        elif self.kind == "files":
            images = [self.images[k] for k in idx]
        elif hasattr(self.images, "subset"):
            images = self.images.subset(idx)
        else:
            images = _IndexedView(self.images, idx)
        return ImageLabelDataset(images, labels)

    def __repr__(self) -> str:
        return f"ImageLabelDataset(n={len(self)}, kind={self.kind!r})"


class _IndexedView:
    """A lazily re-indexed view of an indexable sequence."""

    def __init__(self, base: Any, indices: np.ndarray) -> None:
        self.base = base
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.base[int(self.indices[i])]


def open_image(path: str) -> Image.Image:
    """Open an image file fully (no file handle left open)."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy() if im.mode not in ("P", "PA") else im.convert("RGB")
    except FileNotFoundError:
        raise DataNotFoundError(f"image file not found: {path}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image file {path}: {exc}") from exc


@dataclass
class DataConfig:
    """Where and how to read one domain's data.

    Fields:
        format: ``"npz" | "imagefolder" | "hf" | "vqa" | "vqa_rad_organ" | "synthetic" | "dicom"`` (or any
            format added with :func:`medadapt.data.loaders.register_loader`).
        path: file or folder (npz file, image folder root, ``save_to_disk`` folder,
            VQA-RAD folder, DICOM folder); ``medadapt:...`` points inside the installed package.
        dataset: Hugging Face Hub dataset name (``hf`` format without ``path``).
        splits: medadapt split name -> source split name (npz key prefix, image-folder
            subfolder, HF split, or ``train``/``val``/``test`` for generated splits).
        columns: column names: ``image``, ``label`` (``hf``), ``question``, ``answer`` (``vqa``),
            ``split`` (one table with a column naming each row's split).
        max_samples: optional cap per medadapt split; a deterministic (``seed``) random
            subsample is kept, in original order.
        seed: seed for subsampling and generated splits / synthetic data.
        synthetic: options for the ``synthetic`` format (``kind``, ``n_train``, ``n_test``,
            ``n_val``, ``size``).
        options: extra format-specific options (e.g. ``{"test_fraction": 0.3}`` for
            ``vqa_rad_organ``).
    """

    format: str
    path: str | None = None
    dataset: str | None = None
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "test": "test"})
    columns: dict[str, str] = field(default_factory=lambda: {"image": "image", "label": "label"})
    max_samples: dict[str, int] | None = None
    seed: int = 0
    synthetic: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        valid = registered_formats()
        if not isinstance(self.format, str) or self.format not in valid:
            raise DataError(
                f"unknown data format {self.format!r}; valid formats: {', '.join(valid)}"
            )
        if self.path is not None:
            if not isinstance(self.path, (str, Path)):
                raise DataError(f"data 'path' must be a string, got {type(self.path).__name__}")
            self.path = str(self.path)
        if not isinstance(self.splits, dict) or not self.splits:
            raise DataError(f"data 'splits' must be a non-empty mapping, got {self.splits!r}")
        for k, v in self.splits.items():
            if not isinstance(k, str) or not isinstance(v, str) or not k or not v:
                raise DataError(f"data 'splits' must map split names to source names (strings), got {k!r}: {v!r}")
        if not isinstance(self.columns, dict):
            raise DataError(f"data 'columns' must be a mapping, got {self.columns!r}")
        cols = {"image": "image", "label": "label", **self.columns}
        unknown = set(cols) - set(COLUMN_KEYS)
        if unknown:
            raise DataError(f"unknown keys in data 'columns': {sorted(unknown)}; valid: {list(COLUMN_KEYS)}")
        self.columns = cols
        if self.max_samples is not None:
            if not isinstance(self.max_samples, dict):
                raise DataError(f"data 'max_samples' must map split names to ints, got {self.max_samples!r}")
            for k, v in self.max_samples.items():
                if k not in self.splits:
                    raise DataError(
                        f"max_samples names split {k!r}, which is not in splits {sorted(self.splits)}"
                    )
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise DataError(f"max_samples[{k!r}] must be a positive integer, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise DataError(f"data 'seed' must be a non-negative integer, got {self.seed!r}")
        if self.options is None:
            self.options = {}
        if not isinstance(self.options, dict):
            raise DataError(f"data 'options' must be a mapping, got {self.options!r}")

        fmt = self.format
        if fmt in ("npz", "imagefolder", "vqa_rad_organ", "dicom") and not self.path:
            raise DataError(f"data format {fmt!r} needs 'path'")
        # hf / vqa without path or dataset: the data comes in memory (ContinualTrainer(datasets=...)); the loader
        # reports a missing source when none is given
        if fmt == "synthetic":
            if not isinstance(self.synthetic, dict):
                raise DataError("data format 'synthetic' needs a 'synthetic' mapping with at least 'kind'")
            validate_synthetic_options(self.synthetic)

    @classmethod
    def from_dict(cls, d: "DataConfig | dict[str, Any]") -> "DataConfig":
        """Build a config from a mapping (e.g. parsed YAML); unknown keys are an error."""
        if isinstance(d, DataConfig):
            return d
        if not isinstance(d, dict):
            raise DataError(f"data config must be a mapping, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise DataError(f"unknown data config keys {unknown}; valid keys: {names}")
        if "format" not in d:
            raise DataError(f"data config needs 'format' (got keys {sorted(d)})")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Return a plain (YAML/JSON-friendly) dict of this config."""
        return dataclasses.asdict(self)


@dataclass
class DomainData:
    """One domain's data: its name, label names and datasets per medadapt split."""

    name: str
    labels: list[str]
    splits: dict[str, ImageLabelDataset]

    def __getitem__(self, split: str) -> ImageLabelDataset:
        """Return the dataset of ``split`` (error lists the available splits)."""
        if split not in self.splits:
            raise DataError(
                f"domain {self.name!r} has no split {split!r}; available: {sorted(self.splits)}"
            )
        return self.splits[split]

    @property
    def num_classes(self) -> int:
        """Number of declared classes."""
        return len(self.labels)
