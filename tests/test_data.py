"""Tests for medadapt.data: every format, real data in ../shared/data, and error messages."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medadapt.data import (
    DataConfig,
    DataError,
    DataNotFoundError,
    ImageLabelDataset,
    SYNTHETIC_KINDS,
    default_synthetic_domains,
    load_domain,
    register_loader,
    registered_formats,
)
from medadapt.data.base import DomainData
from medadapt.data.synthetic import generate

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent (only on the dev machine)"
)


def _write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.fixture
def small_npz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    return _write_npz(
        tmp_path / "tiny.npz",
        train_images=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        train_labels=(np.arange(20) % 2).reshape(-1, 1),
        test_images=rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        test_labels=np.arange(6) % 2,
    )


# ---------------------------------------------------------------------- base / config
def test_image_label_dataset_and_subset() -> None:
    imgs = np.arange(5 * 4 * 4, dtype=np.uint8).reshape(5, 4, 4)
    ds = ImageLabelDataset(imgs, [0, 1, 0, 1, 1])
    assert len(ds) == 5 and ds.labels.dtype == np.int64
    img, y = ds[1]
    assert img.shape == (4, 4) and y == 1 and isinstance(y, int)
    sub = ds.subset([4, 0])
    assert len(sub) == 2 and sub.labels.tolist() == [1, 0]
    np.testing.assert_array_equal(sub[0][0], imgs[4])
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(DataError, match="counts must match"):
        ImageLabelDataset(imgs, [0, 1])
    with pytest.raises(DataError, match="uint8"):
        ImageLabelDataset(imgs.astype(np.float32), [0] * 5)


def test_config_validation() -> None:
    with pytest.raises(DataError, match="valid formats: .*npz.*imagefolder.*hf.*vqa_rad_organ.*synthetic.*dicom"):
        DataConfig(format="parquet", path="x")
    with pytest.raises(DataError, match="unknown data config keys \\['pth'\\]"):
        DataConfig.from_dict({"format": "npz", "pth": "x.npz"})
    with pytest.raises(DataError, match="needs 'path'"):
        DataConfig(format="npz")
    with pytest.raises(DataError, match="max_samples names split 'val'"):
        DataConfig(format="npz", path="x.npz", max_samples={"val": 3})
    with pytest.raises(DataError, match="unknown synthetic kind 'mri'"):
        DataConfig(format="synthetic", synthetic={"kind": "mri"})
    cfg = DataConfig.from_dict({"format": "npz", "path": "x.npz"})
    assert cfg.splits == {"train": "train", "test": "test"}
    assert DataConfig.from_dict(cfg.to_dict()) == cfg


def test_register_custom_loader() -> None:
    @register_loader("test_constant")
    def _const(name, labels, cfg):
        ds = ImageLabelDataset(np.zeros((3, 4, 4), np.uint8), [0, 1, 0])
        return DomainData(name, labels, {s: ds for s in cfg.splits})

    assert "test_constant" in registered_formats()
    dom = load_domain("c", ["x", "y"], {"format": "test_constant"})
    assert len(dom["train"]) == 3


# ------------------------------------------------------------------------------ npz
def test_npz_loading(small_npz: Path) -> None:
    dom = load_domain("tiny", ["a", "b"], {"format": "npz", "path": str(small_npz)})
    assert dom.labels == ["a", "b"] and dom.num_classes == 2
    assert len(dom["train"]) == 20 and len(dom["test"]) == 6
    img, y = dom["train"][3]
    assert img.shape == (28, 28) and img.dtype == np.uint8 and y == 1
    assert dom["train"].labels.shape == (20,)
    with pytest.raises(DataError, match="no split 'val'; available"):
        dom["val"]


def test_npz_max_samples_deterministic(small_npz: Path) -> None:
    data = {"format": "npz", "path": str(small_npz), "max_samples": {"train": 7}, "seed": 3}
    a = load_domain("t", ["a", "b"], data)["train"]
    b = load_domain("t", ["a", "b"], data)["train"]
    assert len(a) == 7 and len(b) == 7
    np.testing.assert_array_equal(a.images, b.images)
    c = load_domain("t", ["a", "b"], {**data, "seed": 4})["train"]
    assert not np.array_equal(a.images, c.images)


def test_npz_errors(tmp_path: Path, small_npz: Path) -> None:
    missing = tmp_path / "nope.npz"
    with pytest.raises(DataNotFoundError, match="nope.npz"):
        load_domain("x", ["a", "b"], {"format": "npz", "path": str(missing)})
    with pytest.raises(DataError, match=r"\['val_images', 'val_labels'\].*available keys: \['test_images'"):
        load_domain("x", ["a", "b"], {"format": "npz", "path": str(small_npz), "splits": {"val": "val"}})
    bad = _write_npz(
        tmp_path / "bad.npz",
        train_images=np.zeros((3, 28, 28), np.uint8),
        train_labels=np.array([[0], [5], [1]]),
    )
    with pytest.raises(DataError, match=r"label values \[5\].*declared labels \['a', 'b'\]"):
        load_domain("x", ["a", "b"], {"format": "npz", "path": str(bad), "splits": {"train": "train"}})
    empty = _write_npz(tmp_path / "empty.npz", train_images=np.zeros((0, 28, 28), np.uint8), train_labels=np.zeros((0, 1), int))
    with pytest.raises(DataError, match="domain 'x' split 'train' has no samples"):
        load_domain("x", ["a", "b"], {"format": "npz", "path": str(empty), "splits": {"train": "train"}})
    pickled = _write_npz(tmp_path / "obj.npz", train_images=np.array([object()] * 2), train_labels=np.zeros(2, int))
    with pytest.raises(DataError, match="pickle"):
        load_domain("x", ["a", "b"], {"format": "npz", "path": str(pickled), "splits": {"train": "train"}})
    with pytest.raises(DataError, match="declare 'labels'"):
        load_domain("x", [], {"format": "npz", "path": str(small_npz)})


@needs_shared
@pytest.mark.parametrize(
    "fname,counts",
    [("pneumoniamnist.npz", (4708, 524, 624)), ("breastmnist.npz", (546, 78, 156))],
)
def test_real_medmnist(fname: str, counts: tuple[int, int, int]) -> None:
    splits = {"train": "train", "val": "val", "test": "test"}
    dom = load_domain(fname, ["c0", "c1"], {"format": "npz", "path": str(SHARED / fname), "splits": splits})
    assert tuple(len(dom[s]) for s in splits) == counts
    img, y = dom["test"][0]
    assert img.shape == (28, 28) and img.dtype == np.uint8 and y in (0, 1)
    assert set(np.unique(dom["train"].labels)) == {0, 1}


# ---------------------------------------------------------------------- imagefolder
def _make_folder(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    rng = np.random.default_rng(0)
    for split, classes in layout.items():
        for cls, n in classes.items():
            d = root / split / cls
            d.mkdir(parents=True)
            for k in range(n):
                arr = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"img{k}.png")
            (d / "notes.txt").write_text("ignored")
    return root


def test_imagefolder(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "f", {"train": {"cat": 3, "dog": 2}, "test": {"dog": 2}})
    dom = load_domain("pets", ["dog", "cat"], {"format": "imagefolder", "path": str(root)})
    assert dom["train"].labels.tolist() == [1, 1, 1, 0, 0]  # cat folder sorted first, cat = index 1
    assert dom["test"].labels.tolist() == [0, 0]
    img, y = dom["train"][0]
    assert isinstance(img, Image.Image) and img.size == (10, 12) and y == 1
    inferred = load_domain("pets", None, {"format": "imagefolder", "path": str(root)})
    assert inferred.labels == ["cat", "dog"]


def test_imagefolder_errors(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "f", {"train": {"cat": 1, "bird": 1}, "test": {"cat": 1}})
    with pytest.raises(DataError, match=r"class folder 'bird'.*declared labels \['cat', 'dog'\]"):
        load_domain("pets", ["cat", "dog"], {"format": "imagefolder", "path": str(root)})
    with pytest.raises(DataNotFoundError, match="val.*available subfolders: \\['test', 'train'\\]"):
        load_domain("pets", ["cat", "bird"], {"format": "imagefolder", "path": str(root), "splits": {"val": "val"}})
    with pytest.raises(DataNotFoundError, match="missing_dir"):
        load_domain("pets", ["cat"], {"format": "imagefolder", "path": str(tmp_path / "missing_dir")})
    (root / "test" / "cat" / "img0.png").unlink()
    with pytest.raises(DataError, match="split 'test' has no samples"):
        load_domain("pets", ["cat", "bird"], {"format": "imagefolder", "path": str(root)})


# ------------------------------------------------------------------------------- hf
@pytest.fixture
def hf_folder(tmp_path: Path) -> Path:
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    features = datasets.Features(
        {"img": datasets.Image(), "dx": datasets.ClassLabel(names=["benign", "malignant", "other"])}
    )

    def make(n: int, labels: list[int]):
        imgs = [Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)) for _ in range(n)]
        return datasets.Dataset.from_dict({"img": imgs, "dx": labels}, features=features)

    dd = datasets.DatasetDict({"train": make(4, [0, 1, 1, 0]), "test": make(2, [1, 0])})
    dd.save_to_disk(str(tmp_path / "hf"))
    return tmp_path / "hf"


def test_hf_load_from_disk(hf_folder: Path) -> None:
    data = {"format": "hf", "path": str(hf_folder), "columns": {"image": "img", "label": "dx"}}
    dom = load_domain("skin", None, data)
    assert dom.labels == ["benign", "malignant", "other"]
    assert dom["train"].labels.tolist() == [0, 1, 1, 0]
    img, y = dom["train"][1]
    assert isinstance(img, Image.Image) and img.size == (8, 8) and y == 1
    assert dom["train"].kind == "lazy"
    # declared labels in another order: mapped by name (case-insensitive)
    dom2 = load_domain("skin", ["Malignant", "benign"], data)
    assert dom2["train"].labels.tolist() == [1, 0, 0, 1]
    sub = dom2["train"].subset([1, 2])
    assert sub.labels.tolist() == [0, 0] and isinstance(sub[0][0], Image.Image)
    capped = load_domain("skin", None, {**data, "max_samples": {"train": 2}})
    assert len(capped["train"]) == 2


def test_hf_errors(hf_folder: Path) -> None:
    data = {"format": "hf", "path": str(hf_folder), "columns": {"image": "img", "label": "dx"}}
    with pytest.raises(DataError, match=r"class names \['malignant'\].*declared labels \['benign', 'other'\]"):
        load_domain("skin", ["benign", "other"], data)
    with pytest.raises(DataError, match=r"column\(s\) \['image'\].*available columns: \['img', 'dx'\]"):
        load_domain("skin", None, {**data, "columns": {"label": "dx"}})
    with pytest.raises(DataError, match=r"split 'validation' not in .*available: \['test', 'train'\]"):
        load_domain("skin", None, {**data, "splits": {"val": "validation"}})
    with pytest.raises(DataNotFoundError, match="no_such_hf"):
        load_domain("skin", None, {**data, "path": str(hf_folder.parent / "no_such_hf")})


# ---------------------------------------------------------------------- vqa_rad_organ
@needs_shared
def test_vqa_rad_organ_real() -> None:
    data = {"format": "vqa_rad_organ", "path": str(SHARED / "vqa-rad"), "seed": 0}
    dom = load_domain("vqa_rad_organ", None, data)
    assert dom.labels == ["head", "chest", "abdomen"]
    tr, te = dom["train"], dom["test"]
    assert len(tr) + len(te) == 314
    assert set(tr.images).isdisjoint(te.images)
    totals = np.bincount(np.r_[tr.labels, te.labels], minlength=3)
    assert totals.tolist() == [103, 107, 104]  # HEAD, CHEST, ABD images
    test_counts = np.bincount(te.labels, minlength=3)
    assert np.all(np.abs(test_counts - 0.3 * totals) <= 1)  # stratified 70/30
    again = load_domain("vqa_rad_organ", ["brain", "lung", "belly"], data)
    assert again["test"].images == te.images and again.labels == ["brain", "lung", "belly"]
    other = load_domain("vqa_rad_organ", None, {**data, "seed": 1})
    assert other["test"].images != te.images
    img, y = te[0]
    assert isinstance(img, Image.Image) and min(img.size) >= 256 and y in (0, 1, 2)
    with pytest.raises(DataError, match="needs 3 labels"):
        load_domain("v", ["a", "b"], data)


def test_vqa_rad_organ_missing(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="vqa_rad.json"):
        load_domain("v", None, {"format": "vqa_rad_organ", "path": str(tmp_path)})


# ------------------------------------------------------------------------- synthetic
def test_synthetic_deterministic_and_fast() -> None:
    t0 = time.perf_counter()
    doms = [load_domain(s["name"], s["labels"], s["data"]) for s in default_synthetic_domains()]
    assert time.perf_counter() - t0 < 2.0
    assert len(doms) == 3
    again = [load_domain(s["name"], s["labels"], s["data"]) for s in default_synthetic_domains()]
    for a, b in zip(doms, again):
        for split in ("train", "test"):
            np.testing.assert_array_equal(a[split].images, b[split].images)
            np.testing.assert_array_equal(a[split].labels, b[split].labels)
        assert not np.array_equal(a["train"].images[:10], a["test"].images[:10])
        counts = np.bincount(a["train"].labels)
        assert len(counts) == a.num_classes and counts.max() - counts.min() <= 1
    for spec in default_synthetic_domains():
        assert "{}" in spec["prompt"]
    x1, _ = generate("xray", 10, seed=1)
    x2, _ = generate("xray", 10, seed=2)
    assert not np.array_equal(x1, x2)


def test_synthetic_domains_differ() -> None:
    stats = {}
    for kind, info in SYNTHETIC_KINDS.items():
        x, y = generate(kind, 120, n_classes=3, size=32, seed=0)
        assert x.dtype == np.uint8 and y.dtype == np.int64
        assert x.shape == ((120, 32, 32) if info["channels"] == 1 else (120, 32, 32, 3))
        stats[kind] = (x.mean(), x.std(), (x == 0).mean())
        # the class cue changes the images: class means differ from each other
        means = [x[y == c].astype(float).mean(axis=0) for c in range(3)]
        assert min(np.abs(means[a] - means[b]).max() for a, b in [(0, 1), (0, 2), (1, 2)]) > 5
    kinds = list(stats)
    for i in range(len(kinds)):
        for j in range(i + 1, len(kinds)):
            a, b = np.array(stats[kinds[i]]), np.array(stats[kinds[j]])
            assert np.abs(a - b).max() > 5 or abs(a[2] - b[2]) > 0.05, (kinds[i], kinds[j])
    us, _ = generate("ultrasound", 5)
    assert (us[:, 0, 0] == 0).all() and (us[:, 0, -1] == 0).all()  # outside the cone


def test_synthetic_options_errors() -> None:
    with pytest.raises(DataError, match="unknown synthetic option"):
        load_domain("s", None, {"format": "synthetic", "synthetic": {"kind": "xray", "n_trian": 3}})
    with pytest.raises(DataError, match="2 or 3 labels"):
        load_domain("s", ["a"], {"format": "synthetic", "synthetic": {"kind": "xray"}})
    with pytest.raises(DataError, match="split 'train' has no samples"):
        load_domain("s", None, {"format": "synthetic", "synthetic": {"kind": "xray", "n_train": 0}})
    dom = load_domain("s", None, {"format": "synthetic", "synthetic": {"kind": "histology", "n_train": 9, "n_test": 3, "size": 16}})
    assert dom.labels == SYNTHETIC_KINDS["histology"]["labels"]
    assert dom["train"][0][0].shape == (16, 16, 3)
