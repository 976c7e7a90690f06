"""Loading one domain's data from a :class:`DataConfig`, dispatching on its ``format``.

New formats are added with the :func:`register_loader` decorator; a loader is a function
``(name, labels, config) -> DomainData`` returning the *full* splits. :func:`load_domain`
then applies the shared checks (non-empty splits, labels within the declared list) and the
``max_samples`` subsampling, so every error surfaces before training starts.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DataError, DataNotFoundError, ImageError
from ..images import load_image
from . import synthetic
from .base import DataConfig, DomainData, ImageLabelDataset
from .files import FileOptions, ImageFiles, check_files
from .registry import loader_for, memory_loader_for, register_loader, register_memory_loader, registered_formats
from .tables import split_tables

__all__ = [
    "load_domain",
    "register_loader",
    "registered_formats",
    "IMAGE_EXTENSIONS",
    "VQA_RAD_ORGANS",
    "VQA_RAD_DEFAULT_LABELS",
    "PACKAGE_PREFIX",
    "require_path",
    "stratified_split",
    "match_label_names",
]


#: File extensions read by the ``imagefolder`` format (case-insensitive); DICOM included.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
#: ``image_organ`` values of VQA-RAD, in label order.
VQA_RAD_ORGANS = ("HEAD", "CHEST", "ABD")
#: Label names used for VQA-RAD organ recognition when the domain declares none.
VQA_RAD_DEFAULT_LABELS = ["head", "chest", "abdomen"]


def load_domain(
    name: str, labels: list[str] | None, data: DataConfig | dict[str, Any], source: Any = None
) -> DomainData:
    """Load domain ``name`` with class names ``labels`` from ``data`` (config or mapping).

    ``source``: an in-memory ``datasets.Dataset`` (with a split column) / ``DatasetDict`` / dict of Datasets
    read instead of ``data``'s ``path``/``dataset`` (formats ``hf`` and ``vqa``; ``data`` still gives the
    format, columns and splits).

    ``labels`` may be empty/None for formats that carry label names (``hf`` with a
    ``ClassLabel``, ``imagefolder``, ``vqa_rad_organ``, ``synthetic``).
    Raises :class:`DataError` / :class:`DataNotFoundError` with a message naming the
    problem: missing file, missing key/column, empty split, out-of-range labels.
    """
    if not isinstance(name, str) or not name:
        raise DataError(f"domain name must be a non-empty string, got {name!r}")
    declared = _check_label_names(name, labels)
    cfg = DataConfig.from_dict(data)
    if source is not None:
        dom = memory_loader_for(cfg.format)(name, declared, cfg, source)
    else:
        dom = loader_for(cfg.format)(name, declared, cfg)
    open_ended = not dom.labels and all(getattr(ds, "open_ended", False) for ds in dom.splits.values())
    if not dom.labels and not open_ended:
        raise DataError(
            f"domain {name!r}: format {cfg.format!r} provides no label names; declare 'labels'"
        )
    out: dict[str, ImageLabelDataset] = {}
    for split, ds in dom.splits.items():
        if len(ds) == 0:
            raise DataError(f"domain {name!r} split {split!r} has no samples")
        if not open_ended:
            _check_label_range(name, split, ds.labels, dom.labels)
        cap = (cfg.max_samples or {}).get(split)
        if cap is not None and cap < len(ds):
            rng = np.random.default_rng([cfg.seed, zlib.crc32(split.encode())])
            ds = ds.subset(np.sort(rng.choice(len(ds), size=cap, replace=False)))
        out[split] = ds
    return DomainData(name=name, labels=list(dom.labels), splits=out)


def _check_label_names(name: str, labels: list[str] | None) -> list[str]:
    if labels is None:
        return []
    if isinstance(labels, str) or not all(isinstance(x, str) and x for x in labels):
        raise DataError(f"domain {name!r}: labels must be a list of non-empty strings, got {labels!r}")
    labels = list(labels)
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise DataError(f"domain {name!r}: duplicate label names {dup}")
    return labels


def _check_label_range(domain: str, split: str, values: np.ndarray, labels: list[str]) -> None:
    bad = np.unique(values[(values < 0) | (values >= len(labels))])
    if bad.size:
        raise DataError(
            f"domain {domain!r} split {split!r}: label values {bad.tolist()} are outside the "
            f"declared labels {labels} (valid values 0..{len(labels) - 1})"
        )


#: Prefix of data paths inside the installed medadapt package, e.g. ``medadapt:demo/medical_demo.npz``.
PACKAGE_PREFIX = "medadapt:"


def require_path(path: str | None, what: str, domain: str, is_dir: bool) -> Path:
    """``path`` as an existing file or folder (``medadapt:`` paths point inside the package), else a DataError."""
    text = str(path)
    if text.startswith(PACKAGE_PREFIX):
        p = Path(__file__).resolve().parents[1] / text[len(PACKAGE_PREFIX):]
    else:
        p = Path(text).expanduser()
    if not p.exists():
        raise DataNotFoundError(f"domain {domain!r}: {what} not found: {p}")
    if is_dir and not p.is_dir():
        raise DataError(f"domain {domain!r}: {what} must be a folder: {p}")
    if not is_dir and p.is_dir():
        raise DataError(f"domain {domain!r}: {what} must be a file, got a folder: {p}")
    return p


def stratified_split(y: np.ndarray, test_fraction: Any, seed: int, domain: str) -> dict[str, np.ndarray]:
    """Deterministic stratified split: per class, indices shuffled with ``seed``, ``round(n * test_fraction)``
    to ``test``, the rest to ``train``; ``all`` holds every index. Returns source split -> indices."""
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0.0 < float(test_fraction) < 1.0:
        raise DataError(f"domain {domain!r}: options.test_fraction must be in (0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        pick = rng.permutation(members)[: int(round(len(members) * float(test_fraction)))]
        is_test[pick] = True
    return {"train": np.flatnonzero(~is_test), "test": np.flatnonzero(is_test), "all": np.arange(len(y))}


def match_label_names(values: list[str], labels: list[str], domain: str, where: str) -> np.ndarray:
    """Label indices for label-name strings (case- and space-insensitive) or integer strings."""
    declared = {_norm(lab): k for k, lab in enumerate(labels)}
    out = []
    for v in values:
        text = str(v).strip()
        if _norm(text) in declared:
            out.append(declared[_norm(text)])
        elif text.lstrip("-").isdigit():
            out.append(int(text))
        else:
            raise DataError(f"domain {domain!r}: label {text!r} in {where} is not one of the declared labels {labels}")
    return np.asarray(out, dtype=np.int64)


# ----------------------------------------------------------------------------- npz
@register_loader("npz")
def _load_npz(name: str, labels: list[str], cfg: DataConfig) -> DomainData:
    """MedMNIST-style ``.npz``: ``{split}_images`` (uint8) and ``{split}_labels``."""
    path = require_path(cfg.path, "npz file", name, is_dir=False)
    if not labels:
        raise DataError(f"domain {name!r}: npz files carry no label names; declare 'labels'")
    try:
        npz = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise DataError(f"domain {name!r}: cannot read npz file {path}: {e}") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"domain {name!r}: {path} is a single array, not an .npz archive")
    splits: dict[str, ImageLabelDataset] = {}
    with npz:
        keys = sorted(npz.files)
        for split, src in cfg.splits.items():
            ik, lk = f"{src}_images", f"{src}_labels"
            missing = [k for k in (ik, lk) if k not in keys]
            if missing:
                raise DataError(
                    f"domain {name!r} split {split!r}: key(s) {missing} not in {path}; "
                    f"available keys: {keys}"
                )
            try:
                images, labs = npz[ik], npz[lk]
            except ValueError as e:  # object arrays need pickle, which is never allowed
                raise DataError(f"domain {name!r}: cannot read {ik}/{lk} from {path} without pickle: {e}") from e
            if images.ndim == 4 and images.shape[-1] == 1:
                images = images[..., 0]
            if images.ndim not in (3, 4) or images.dtype != np.uint8:
                raise DataError(
                    f"domain {name!r}: {ik} must be uint8 (N,H,W) or (N,H,W,C), "
                    f"got {images.dtype} {images.shape}"
                )
            if labs.ndim == 2 and labs.shape[1] == 1:
                labs = labs[:, 0]
            if labs.ndim != 1:
                raise DataError(
                    f"domain {name!r}: {lk} must have shape (N,) or (N,1) (single-label), got {labs.shape}"
                )
            if len(labs) != len(images):
                raise DataError(f"domain {name!r}: {ik} has {len(images)} rows but {lk} has {len(labs)}")
            if labs.dtype.kind not in "iub":
                fractional = labs.dtype.kind != "f" or not np.all(np.isfinite(labs)) or np.any(labs != np.round(labs))
                if fractional:
                    odd = np.unique(labs[~np.isfinite(labs) | (labs != np.round(labs))] if labs.dtype.kind == "f" else labs)[:5]
                    raise DataError(
                        f"domain {name!r}: {lk} in {path} holds labels that are not whole class indices "
                        f"(dtype {labs.dtype}, e.g. {odd.tolist()}); labels must be integers 0..{len(labels) - 1}"
                    )
            splits[split] = ImageLabelDataset(images, labs.astype(np.int64))
    return DomainData(name, labels, splits)


# --------------------------------------------------------------------- imagefolder
@register_loader("imagefolder")
def _load_imagefolder(name: str, labels: list[str], cfg: DataConfig) -> DomainData:
    """``path/<split>/<label_name>/*.png|jpg|...|dcm``; label index = position in ``labels``.

    With no declared labels, the sorted union of class-folder names is used. ``options``:
    ``window`` (DICOM/16-bit), ``frame``, ``on_bad_file`` (``error`` | ``skip``), ``check_files``
    (see :class:`medadapt.data.files.FileOptions`).
    """
    root = require_path(cfg.path, "image folder", name, is_dir=True)
    options = FileOptions(name, cfg.options)
    split_dirs: dict[str, Path] = {}
    available = sorted(p.name for p in root.iterdir() if p.is_dir())
    for split, src in cfg.splits.items():
        d = root / src
        if not d.is_dir():
            raise DataNotFoundError(
                f"domain {name!r} split {split!r}: folder not found: {d}; available subfolders: {available}"
            )
        split_dirs[split] = d
    if not labels:
        labels = sorted({p.name for d in split_dirs.values() for p in d.iterdir() if p.is_dir()})
    index = {lab: k for k, lab in enumerate(labels)}
    splits: dict[str, ImageLabelDataset] = {}
    for split, d in split_dirs.items():
        paths: list[str] = []
        ys: list[int] = []
        for cls_dir in sorted(p for p in d.iterdir() if p.is_dir()):
            if cls_dir.name not in index:
                raise DataError(
                    f"domain {name!r} split {split!r}: class folder {cls_dir.name!r} ({cls_dir}) "
                    f"is not in the declared labels {labels}"
                )
            files = sorted(
                f for f in cls_dir.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
            )
            paths += [str(f) for f in files]
            ys += [index[cls_dir.name]] * len(files)
        files_, y = check_files(ImageFiles(paths, options.window, options.frame), np.asarray(ys, dtype=np.int64), options, name, split)
        splits[split] = ImageLabelDataset(files_, y)
    return DomainData(name, labels, splits)


# ------------------------------------------------------------------------------ hf
class HFImageColumn:
    """Lazily decoded image column of a Hugging Face ``datasets.Dataset``.

    Items are PIL images (``Image`` feature, undecoded ``{"bytes", "path"}`` cells, DICOM bytes or
    paths, or string file paths) or uint8 arrays (array-like cells). ``window`` and ``frame`` apply
    to DICOM and 16-bit cells, as in the ``imagefolder`` format.
    """

    def __init__(self, ds: Any, column: str, window: Any = None, frame: int | None = None) -> None:
        self.ds = ds.select_columns([column])
        self.column = column
        self.files = ImageFiles([], window, frame)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Any:
        value = self.ds[int(i)][self.column]
        if isinstance(value, Image.Image):
            return value
        if isinstance(value, str):  # a file path (PNG, JPEG, DICOM, ...)
            return self.files.read(value)
        if isinstance(value, dict) and ("bytes" in value or "path" in value):  # undecoded Image
            if value.get("bytes") is not None:
                try:
                    return load_image(value["bytes"], window=self.files.window, frame=self.files.frame)
                except ImageError as exc:
                    raise DataError(f"row {int(i)} of column {self.column!r}: {exc}") from exc
            return self.files.read(str(value["path"]))
        return np.asarray(value, dtype=np.uint8)

    def subset(self, indices: np.ndarray) -> "HFImageColumn":
        """Column over the rows ``indices`` (lazy; no decoding)."""
        return HFImageColumn(self.ds.select([int(k) for k in indices]), self.column, self.files.window, self.files.frame)


def _norm(s: str) -> str:
    return s.strip().lower()


@register_loader("hf")
def _load_hf(name: str, labels: list[str], cfg: DataConfig) -> DomainData:
    """A Hugging Face dataset (``load_from_disk(path)`` or ``load_dataset(dataset)``).

    Label names: the declared ``labels``; else the ``ClassLabel`` names; else (string label
    column) the sorted distinct strings. ``ClassLabel`` / string labels whose names differ
    from the declared ones are mapped by name (case- and whitespace-insensitive).
    """
    import datasets

    if cfg.path:
        p = require_path(cfg.path, "Hugging Face dataset folder", name, is_dir=True)
        try:
            dd = datasets.load_from_disk(str(p))
        except Exception as e:  # noqa: BLE001 - datasets raises many types
            raise DataError(f"domain {name!r}: cannot load dataset saved at {p}: {e}") from e
        where = str(p)
    elif cfg.dataset:
        try:
            dd = datasets.load_dataset(cfg.dataset, cfg.options.get("config"))
        except Exception as e:  # noqa: BLE001
            raise DataError(f"domain {name!r}: cannot load Hugging Face dataset {cfg.dataset!r}: {e}") from e
        where = str(cfg.dataset)
    else:
        raise DataError(f"domain {name!r}: data format 'hf' needs 'path' (a save_to_disk folder) or 'dataset' (a Hub dataset), or an in-memory dataset.")
    return hf_domain(name, labels, cfg, dd, where)


@register_memory_loader("hf")
def _hf_from_memory(name: str, labels: list[str], cfg: DataConfig, source: Any) -> DomainData:
    """The ``hf`` format from an in-memory ``Dataset`` (with a split column), ``DatasetDict`` or dict of Datasets."""
    return hf_domain(name, labels, cfg, source, "the in-memory dataset")


def hf_domain(name: str, labels: list[str], cfg: DataConfig, dd: Any, where: str) -> DomainData:
    """An image/label domain from a DatasetDict, a dict of Datasets, or one Dataset with a split column."""
    import datasets

    file_options = FileOptions(name, cfg.options, extra_keys=("config",))
    tables = split_tables(dd, dict(cfg.splits), cfg.columns.get("split", "split"), name, where)
    img_col, lab_col = cfg.columns["image"], cfg.columns["label"]
    raw: dict[str, tuple[Any, np.ndarray, Any]] = {}
    for split, ds in tables.items():
        src = cfg.splits[split]
        missing = [c for c in (img_col, lab_col) if c not in ds.column_names]
        if missing:
            raise DataError(
                f"domain {name!r} split {split!r}: column(s) {missing} not in {where}[{src!r}]; "
                f"available columns: {ds.column_names}"
            )
        raw[split] = (ds, np.asarray(list(ds[lab_col])), ds.features[lab_col])

    first_feat = next(iter(raw.values()))[2]
    if not labels:
        if isinstance(first_feat, datasets.ClassLabel):
            labels = list(first_feat.names)
        elif all(v.dtype.kind in "US" or v.dtype == object for _, v, _ in raw.values()):
            labels = sorted({str(x) for _, v, _ in raw.values() for x in v})
    declared = {_norm(lab): k for k, lab in enumerate(labels)}

    splits: dict[str, ImageLabelDataset] = {}
    for split, (ds, values, feat) in raw.items():
        if isinstance(feat, datasets.ClassLabel):
            names = list(feat.names)
            if [_norm(x) for x in names] != [_norm(x) for x in labels]:
                used = np.unique(values[(values >= 0) & (values < len(names))])
                undeclared = [names[k] for k in used if _norm(names[k]) not in declared]
                if undeclared:
                    raise DataError(
                        f"domain {name!r} split {split!r}: class names {undeclared} in {where} "
                        f"are not in the declared labels {labels}"
                    )
                lut = np.array([declared.get(_norm(n), -1) for n in names], dtype=np.int64)
                ok = (values >= 0) & (values < len(names))
                values = np.where(ok, lut[np.clip(values, 0, len(names) - 1)], values)
        elif values.dtype.kind in "US" or values.dtype == object:
            strs = [str(x) for x in values]
            undeclared = sorted({s for s in strs if _norm(s) not in declared})
            if undeclared:
                raise DataError(
                    f"domain {name!r} split {split!r}: label values {undeclared} in {where} "
                    f"are not in the declared labels {labels}"
                )
            values = np.array([declared[_norm(s)] for s in strs], dtype=np.int64)
        elif values.dtype.kind not in "iub":
            raise DataError(
                f"domain {name!r} split {split!r}: label column {lab_col!r} must hold integers, "
                f"ClassLabel or strings, got dtype {values.dtype}"
            )
        column = HFImageColumn(ds, img_col, file_options.window, file_options.frame)
        splits[split] = ImageLabelDataset(column, values.astype(np.int64))
    return DomainData(name, labels, splits)


# ------------------------------------------------------------------- vqa_rad_organ
@register_loader("vqa_rad_organ")
def _load_vqa_rad_organ(name: str, labels: list[str], cfg: DataConfig) -> DomainData:
    """VQA-RAD organ recognition: one sample per referenced image, label from ``image_organ``.

    Organs HEAD, CHEST, ABD map to labels 0, 1, 2 (names: the declared ``labels`` in that
    order, default ``["head", "chest", "abdomen"]``). VQA-RAD has no per-image split, so a
    deterministic stratified split is made: per organ, images sorted by name are shuffled
    with ``seed`` and ``round(n * test_fraction)`` go to ``test`` (``options.test_fraction``,
    default 0.3), the rest to ``train``. Source split names: ``train``, ``test``, ``all``.
    """
    root = require_path(cfg.path, "VQA-RAD folder", name, is_dir=True)
    ann = root / "vqa_rad.json"
    img_dir = root / "images"
    if not ann.is_file():
        raise DataNotFoundError(f"domain {name!r}: VQA-RAD annotation file not found: {ann}")
    if not img_dir.is_dir():
        raise DataNotFoundError(f"domain {name!r}: VQA-RAD image folder not found: {img_dir}")
    if not labels:
        labels = list(VQA_RAD_DEFAULT_LABELS)
    if len(labels) != len(VQA_RAD_ORGANS):
        raise DataError(
            f"domain {name!r}: vqa_rad_organ needs {len(VQA_RAD_ORGANS)} labels for organs "
            f"{list(VQA_RAD_ORGANS)} (in that order), got {labels}"
        )
    frac = cfg.options.get("test_fraction", 0.3)
    with open(ann, encoding="utf-8") as f:
        records = json.load(f)
    organ_of: dict[str, str] = {}
    for r in records:
        img = str(r.get("image_name", "")).strip()
        organ = str(r.get("image_organ", "")).strip().upper()
        if not img:
            continue
        if organ not in VQA_RAD_ORGANS:
            raise DataError(
                f"domain {name!r}: image {img!r} has image_organ {organ!r}; expected one of {list(VQA_RAD_ORGANS)}"
            )
        if organ_of.setdefault(img, organ) != organ:
            raise DataError(f"domain {name!r}: image {img!r} is annotated with organs {organ_of[img]} and {organ}")
    names = sorted(organ_of)
    missing = [n for n in names if not (img_dir / n).is_file()]
    if missing:
        raise DataNotFoundError(
            f"domain {name!r}: {len(missing)} referenced image(s) missing from {img_dir}, e.g. {missing[:3]}"
        )
    y = np.array([VQA_RAD_ORGANS.index(organ_of[n]) for n in names], dtype=np.int64)
    parts = stratified_split(y, frac, cfg.seed, name)
    paths = [str(img_dir / n) for n in names]
    splits: dict[str, ImageLabelDataset] = {}
    for split, src in cfg.splits.items():
        if src not in parts:
            raise DataError(
                f"domain {name!r} split {split!r}: vqa_rad_organ has no split {src!r}; available: {sorted(parts)}"
            )
        idx = parts[src]
        splits[split] = ImageLabelDataset([paths[k] for k in idx], y[idx])
    return DomainData(name, labels, splits)


# ----------------------------------------------------------------------- synthetic
@register_loader("synthetic")
def _load_synthetic(name: str, labels: list[str], cfg: DataConfig) -> DomainData:
    """Built-in synthetic modality (see :mod:`medadapt.data.synthetic`)."""
    opts = synthetic.validate_synthetic_options(cfg.synthetic or {})
    kind = opts["kind"]
    if not labels:
        labels = list(synthetic.SYNTHETIC_KINDS[kind]["labels"])
    n_classes = len(labels)
    if n_classes not in (2, 3):
        raise DataError(f"domain {name!r}: synthetic kind {kind!r} supports 2 or 3 labels, got {labels}")
    splits: dict[str, ImageLabelDataset] = {}
    for split, src in cfg.splits.items():
        key = f"n_{src}"
        if key not in opts:
            raise DataError(
                f"domain {name!r} split {split!r}: synthetic data has no split {src!r}; "
                f"available: ['train', 'val', 'test']"
            )
        images, y = synthetic.generate(
            kind, opts[key], n_classes=n_classes, size=opts["size"], seed=cfg.seed, split=src
        )
        splits[split] = ImageLabelDataset(images, y)
    return DomainData(name, labels, splits)
