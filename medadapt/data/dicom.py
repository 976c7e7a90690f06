"""The ``dicom`` data format: a folder of DICOM files with a CSV of labels, or a folder per label.

Layouts (``path`` is the folder):

* ``options.csv`` names a CSV (relative to ``path``) with columns ``file`` and ``label`` and,
  optionally, ``split``. ``file`` is relative to ``path``; ``label`` is a declared label name
  (case-insensitive) or its index. Without a ``split`` column, a deterministic stratified split is
  made (``options.test_fraction``, default 0.3; source splits ``train``, ``test``, ``all``). The CSV is
  read as UTF-8; ``options.encoding`` (e.g. ``latin-1``) reads another encoding.
* otherwise ``path/<split>/<label>/<files>``, like ``imagefolder``: every file with a ``.dcm`` /
  ``.dicom`` suffix or the DICOM marker is read (``DICOMDIR`` index files are ignored).

Images are windowed as ``options.window`` says (a name such as ``lung``, ``[center, width]``, or
absent for each file's own window); ``options.frame`` picks a frame of multi-frame files. Every
file is decoded once at load time; ``options.on_bad_file: skip`` leaves unreadable ones out.

    - name: chest_ct
      labels: [normal, nodule]
      data: {format: dicom, path: data/ct, options: {csv: labels.csv, window: lung}}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..medical.dicom import is_dicom
from .base import DataConfig, DataError, DataNotFoundError, DomainData, ImageLabelDataset
from .csv_table import read_csv_rows
from .files import FileOptions, ImageFiles, check_files
from .loaders import match_label_names, register_loader, require_path, stratified_split

__all__ = ["load_dicom_domain"]


def _folder_layout(root: Path, labels: list[str], cfg: DataConfig, name: str) -> tuple[list[str], dict[str, tuple[list[str], np.ndarray]]]:
    available = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not labels:
        labels = sorted({c.name for src in cfg.splits.values() if (root / src).is_dir() for c in (root / src).iterdir() if c.is_dir()})
    index = {lab: k for k, lab in enumerate(labels)}
    out: dict[str, tuple[list[str], np.ndarray]] = {}
    for split, src in cfg.splits.items():
        folder = root / src
        if not folder.is_dir():
            raise DataNotFoundError(
                f"domain {name!r} split {split!r}: folder not found: {folder}; available subfolders: {available} "
                "(or give options.csv with columns file,label[,split])"
            )
        paths: list[str] = []
        ys: list[int] = []
        for cls_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            if cls_dir.name not in index:
                raise DataError(f"domain {name!r} split {split!r}: class folder {cls_dir.name!r} is not in the declared labels {labels}")
            files = sorted(f for f in cls_dir.rglob("*") if f.is_file() and f.name.upper() != "DICOMDIR" and is_dicom(f))
            paths += [str(f) for f in files]
            ys += [index[cls_dir.name]] * len(files)
        out[split] = (paths, np.asarray(ys, dtype=np.int64))
    return labels, out


def _csv_layout(root: Path, labels: list[str], cfg: DataConfig, name: str) -> dict[str, tuple[list[str], np.ndarray]]:
    table = root / str(cfg.options["csv"])
    if not table.is_file():
        raise DataNotFoundError(f"domain {name!r}: label CSV not found: {table}")
    if not labels:
        raise DataError(f"domain {name!r}: the dicom format with a CSV needs declared 'labels'")
    rows = read_csv_rows(table, name, cfg.options.get("encoding"))
    columns = set(rows[0]) if rows else set()
    if not {"file", "label"} <= columns:
        raise DataError(f"domain {name!r}: {table} needs columns 'file' and 'label' (optional 'split'), got {sorted(columns)}")
    files = [str(root / r["file"].strip()) for r in rows]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise DataNotFoundError(f"domain {name!r}: {len(missing)} file(s) listed in {table} do not exist, e.g. {missing[:3]}")
    y = match_label_names([r["label"] for r in rows], labels, name, str(table))
    if "split" in columns:
        source = np.array([r["split"].strip() for r in rows])
        parts = {s: np.flatnonzero(source == s) for s in sorted(set(source.tolist()))}
    else:
        parts = stratified_split(y, cfg.options.get("test_fraction", 0.3), cfg.seed, name)
    out: dict[str, tuple[list[str], np.ndarray]] = {}
    for split, src in cfg.splits.items():
        if src not in parts:
            raise DataError(f"domain {name!r} split {split!r}: no rows with split {src!r} in {table}; available: {sorted(parts)}")
        out[split] = ([files[k] for k in parts[src]], y[parts[src]])
    return out


@register_loader("dicom")
def load_dicom_domain(name: str, labels: list[str], cfg: DataConfig) -> DomainData:
    """Load a ``dicom`` domain (see the module docstring for the layouts and options)."""
    root = require_path(cfg.path, "DICOM folder", name, is_dir=True)
    options = FileOptions(name, cfg.options, extra_keys=("csv", "test_fraction", "encoding"))
    if "csv" in cfg.options:
        parts = _csv_layout(root, labels, cfg, name)
    else:
        labels, parts = _folder_layout(root, labels, cfg, name)
    splits: dict[str, ImageLabelDataset] = {}
    for split, (paths, y) in parts.items():
        files, y = check_files(ImageFiles(paths, options.window, options.frame), y, options, name, split)
        splits[split] = ImageLabelDataset(files, y)
    return DomainData(name, labels, splits)
