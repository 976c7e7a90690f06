"""Data: the ``dicom`` format (CSV or folder per label, windowing from the config), DICOM in imagefolder
and HF datasets, unreadable files named or skipped, non-integer npz labels, and a recipe run on DICOM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medadapt.data import BadFilesWarning, DataError, load_domain
from medadapt.medical import read_dicom

from .conftest import bundled_file, optional_import
from .training_helpers import run_recipe, tiny_run, write_yaml

pydicom = optional_import("pydicom", reason="the dicom extra (pydicom) is not installed")
DICOM_DIR = Path(pydicom.__file__).parent / "data" / "test_files"
CT_FILES = ["CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm"]
MR_FILES = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_jp2klossless.dcm"]


def real(name: str) -> Path:
    return bundled_file(DICOM_DIR, name, "pydicom")


def copy_to(folder: Path, names: list[str], stem: str = "") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, name in enumerate(names):
        target = folder / (f"{stem}{k}.dcm" if stem else name)
        shutil.copyfile(real(name), target)
        out.append(target)
    return out


# -- npz labels -------------------------------------------------------------------------------------
def test_npz_labels_that_are_not_integers_are_refused(tmp_path):
    images = np.zeros((4, 8, 8), np.uint8)
    np.savez(tmp_path / "half.npz", train_images=images, train_labels=np.array([0.5, 1.5, 0.0, 1.0]),
             test_images=images, test_labels=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match=r"train_labels in .*half.npz holds labels that are not whole class indices.*0.5, 1.5"):
        load_domain("d", ["a", "b"], {"format": "npz", "path": str(tmp_path / "half.npz")})
    np.savez(tmp_path / "whole.npz", train_images=images, train_labels=np.array([[0.0], [1.0], [0.0], [1.0]]),
             test_images=images, test_labels=np.array([0, 1, 0, 1]))
    dom = load_domain("d", ["a", "b"], {"format": "npz", "path": str(tmp_path / "whole.npz")})
    assert dom["train"].labels.tolist() == [0, 1, 0, 1]


# -- unreadable files in an image folder ------------------------------------------------------------
def _image_folder(root: Path) -> Path:
    for label in ("a", "b"):
        (root / "train" / label).mkdir(parents=True)
        (root / "test" / label).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(np.full((8, 8), 40 * k, np.uint8)).save(root / "train" / label / f"{k}.png")
            Image.fromarray(np.full((8, 8), 40 * k, np.uint8)).save(root / "test" / label / f"{k}.png")
    good = (root / "train" / "a" / "0.png").read_bytes()
    (root / "train" / "b" / "1.png").write_bytes(good[: len(good) // 2])  # truncated PNG
    return root


def test_corrupt_png_in_imagefolder_is_named_or_skipped_with_a_count(tmp_path):
    root = _image_folder(tmp_path / "folder")
    config = {"format": "imagefolder", "path": str(root)}
    with pytest.raises(DataError, match=r"split 'train': 1 of 6 image file\(s\) cannot be read; first: cannot read image file .*b/1.png.*on_bad_file: skip"):
        load_domain("d", ["a", "b"], config)
    with pytest.warns(BadFilesWarning, match=r"skipped 1 of 6 image file\(s\).*b/1.png"):
        dom = load_domain("d", ["a", "b"], {**config, "options": {"on_bad_file": "skip"}})
    assert len(dom["train"]) == 5 and dom["train"].labels.tolist() == [0, 0, 0, 1, 1]
    assert len(dom["test"]) == 6
    assert all(np.asarray(dom["train"][k][0]).shape == (8, 8) for k in range(5))
    with pytest.raises(DataError, match="on_bad_file' must be one of"):
        load_domain("d", ["a", "b"], {**config, "options": {"on_bad_file": "ignore"}})
    with pytest.raises(DataError, match=r"unknown data option\(s\) \['windwo'\]"):
        load_domain("d", ["a", "b"], {**config, "options": {"windwo": "lung"}})


# -- the dicom format -------------------------------------------------------------------------------
def test_dicom_folder_per_label_with_the_window_from_the_config(tmp_path):
    root = tmp_path / "dicom"
    for split in ("train", "test"):
        copy_to(root / split / "ct", CT_FILES)
        copy_to(root / split / "mr", MR_FILES)
    (root / "train" / "mr" / "notes.txt").write_text("not an image")  # ignored: no DICOM suffix or marker
    dom = load_domain("scans", ["ct", "mr"], {"format": "dicom", "path": str(root), "options": {"window": [40, 400]}})
    assert dom["train"].labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    image, label = dom["train"][0]
    assert label == 0 and image.mode == "L"
    expected = read_dicom(root / "train" / "ct" / "693_J2KI.dcm", window=(40, 400))
    assert np.array_equal(np.asarray(image), np.asarray(expected))
    own = load_domain("scans", ["ct", "mr"], {"format": "dicom", "path": str(root)})
    assert not np.array_equal(np.asarray(own["train"][0][0]), np.asarray(image))  # the file's own window (40/100)
    with pytest.raises(DataError, match="unknown window name 'lungg'"):
        load_domain("scans", ["ct", "mr"], {"format": "dicom", "path": str(root), "options": {"window": "lungg"}})


def test_dicom_csv_with_and_without_a_split_column(tmp_path):
    root = tmp_path / "csv"
    ct = copy_to(root / "files", CT_FILES * 2, stem="ct")
    mr = copy_to(root / "files", MR_FILES, stem="mr")
    rows = ["file,label,split"]
    rows += [f"files/{p.name},CT,{'test' if k == 0 else 'train'}" for k, p in enumerate(ct)]
    rows += [f"files/{p.name},1,{'test' if k == 0 else 'train'}" for k, p in enumerate(mr)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    dom = load_domain("scans", ["ct", "mr"], {"format": "dicom", "path": str(root), "options": {"csv": "labels.csv", "window": "brain"}})
    assert dom["train"].labels.tolist() == [0] * 5 + [1] * 3 and dom["test"].labels.tolist() == [0, 1]
    (root / "nosplit.csv").write_text("\n".join(r.rsplit(",", 1)[0] for r in rows) + "\n")
    dom = load_domain("scans", ["ct", "mr"], {"format": "dicom", "path": str(root), "options": {"csv": "nosplit.csv", "test_fraction": 0.5}})
    assert sorted(dom["test"].labels.tolist()) == [0, 0, 0, 1, 1] and len(dom["train"]) == 5
    (root / "bad.csv").write_text("file,label\nfiles/ct0.dcm,lung nodule\n")
    with pytest.raises(DataError, match="label 'lung nodule' in .*bad.csv is not one of the declared labels"):
        load_domain("scans", ["ct", "mr"], {"format": "dicom", "path": str(root), "options": {"csv": "bad.csv"}})


def test_truncated_or_imageless_dicom_in_a_domain_is_named_or_skipped(tmp_path):
    root = tmp_path / "dicom"
    copy_to(root / "train" / "ct", CT_FILES)
    copy_to(root / "train" / "mr", MR_FILES + ["MR_truncated.dcm", "test-SR.dcm"])
    config = {"format": "dicom", "path": str(root), "splits": {"train": "train"}}
    with pytest.raises(DataError, match=r"2 of 9 image file\(s\) cannot be read; first: cannot read image file .*MR_truncated.dcm"):
        load_domain("scans", ["ct", "mr"], config)
    with pytest.warns(BadFilesWarning, match=r"skipped 2 of 9"):
        dom = load_domain("scans", ["ct", "mr"], {**config, "options": {"on_bad_file": "skip"}})
    assert len(dom["train"]) == 7


def test_imagefolder_and_hf_datasets_accept_dicom_paths(tmp_path):
    datasets = pytest.importorskip("datasets")
    root = tmp_path / "folder"
    for split in ("train", "test"):
        copy_to(root / split / "ct", CT_FILES[:2])
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / split / "ct" / "blank.png")
        copy_to(root / split / "mr", MR_FILES[:2])
    dom = load_domain("mixed", ["ct", "mr"], {"format": "imagefolder", "path": str(root), "options": {"window": "lung"}})
    assert len(dom["train"]) == 5
    assert np.array_equal(np.asarray(dom["train"][0][0]), np.asarray(read_dicom(root / "train" / "ct" / "693_J2KI.dcm", window="lung")))
    files = sorted(str(p) for p in (root / "train").rglob("*.dcm"))
    table = datasets.Dataset.from_dict({"image": files, "label": [0, 0, 1, 1]})
    datasets.DatasetDict({"train": table, "test": table}).save_to_disk(str(tmp_path / "hf"))
    dom = load_domain("hf", ["ct", "mr"], {"format": "hf", "path": str(tmp_path / "hf"), "options": {"window": [600, 1600]}})
    assert np.array_equal(np.asarray(dom["train"][2][0]), np.asarray(read_dicom(files[2], window=(600, 1600))))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dicom_domain_end_to_end_through_the_recipe(tmp_path):
    root = tmp_path / "dicom"
    for split in ("train", "test"):
        copy_to(root / split / "ct", CT_FILES * 2, stem="ct")
        copy_to(root / split / "mr", MR_FILES, stem="mr")
    settings = tiny_run(tmp_path / "run", "rehearsal", n_domains=1, n_train=16, n_test=12)
    settings["domains"].append({
        "name": "scans", "labels": ["ct", "mr"], "prompt": "a {} scan",
        "data": {"format": "dicom", "path": str(root), "options": {"window": "abdomen"}},
    })
    config = write_yaml(tmp_path / "run.yaml", settings)
    done = run_recipe("rehearsal", "--config", str(config), "--no-progress", "train.epochs=1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["domains"][1]["data"]["options"]["window"] == "abdomen"
    assert len(results["accuracy_matrix"]) == 2 and len(results["accuracy_matrix"][1]) == 2
