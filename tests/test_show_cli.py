"""``medadapt show IMAGE``: a PNG of the input as the model receives it (window, orientation, resize)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medadapt.cli import main
from medadapt.images import model_input_image
from medadapt.medical import nifti_slices, read_dicom

ROOT = Path(__file__).resolve().parents[1]


def denormalised(model, image) -> np.ndarray:
    """What the tiny CLIP receives for ``image``, back in 0..255."""
    processor = model.backbone.image_processor
    pixels = model.preprocess([image])[0]
    mean = torch.tensor(processor.image_mean).view(-1, 1, 1)
    std = torch.tensor(processor.image_std).view(-1, 1, 1)
    return np.round((pixels * std + mean).clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.int64)


def written(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "RGB"
        return np.asarray(image).astype(np.int64)


def test_show_writes_the_model_input_with_the_window_and_orientation(tiny_clip, tmp_path, capsys):
    picture = np.zeros((40, 60), np.uint16)
    picture[:20, :30] = 4000  # bright top-left quadrant of a 16-bit image: must stay top-left
    picture[30:, 40:] = 1000
    Image.fromarray(picture).save(tmp_path / "scan.png")
    assert main(["show", str(tmp_path / "scan.png"), "-o", str(tmp_path / "out.png"), "--scale", "1"]) == 0
    shown = written(tmp_path / "out.png")
    assert shown.shape == (32, 32, 3)
    assert np.abs(shown - denormalised(tiny_clip, picture)).max() <= 1
    assert shown[2, 2, 0] > 200 and shown[-2, 2, 0] < 30 and shown[2, -2, 0] < 30  # only the top-left is bright
    assert "model input of tiny-clip, 32x32 shown at 32x32" in capsys.readouterr().out
    assert main(["show", str(tmp_path / "scan.png"), "-o", str(tmp_path / "big.png")]) == 0
    assert written(tmp_path / "big.png").shape == (256, 256, 3)  # enlarged 8x by default


def test_show_dicom_window_and_nifti_slice(tiny_clip, tmp_path):
    from .conftest import optional_import

    pydicom = optional_import("pydicom", reason="the dicom extra is not installed")
    nibabel_testing = optional_import("nibabel.testing", reason="the nifti extra is not installed")

    ct = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    assert main(["show", str(ct), "-o", str(tmp_path / "lung.png"), "--window", "lung", "--scale", "1"]) == 0
    assert main(["show", str(ct), "-o", str(tmp_path / "soft.png"), "--window", "40,400", "--scale", "1"]) == 0
    lung = written(tmp_path / "lung.png")
    assert np.abs(lung - denormalised(tiny_clip, read_dicom(ct, window="lung"))).max() <= 1
    assert np.abs(written(tmp_path / "soft.png") - denormalised(tiny_clip, read_dicom(ct, window=(40, 400)))).max() <= 1
    assert not np.array_equal(lung, written(tmp_path / "soft.png"))
    assert main(["show", str(ct), "-o", str(tmp_path / "full.png"), "--original", "--scale", "1"]) == 0
    with Image.open(tmp_path / "full.png") as full:  # the windowed DICOM itself, greyscale, before resizing
        assert full.mode == "L" and np.array_equal(np.asarray(full), np.asarray(read_dicom(ct)))
    anat = Path(nibabel_testing.data_path) / "anatomical.nii"
    assert main(["show", str(anat), "-o", str(tmp_path / "axial.png"), "--slice", "7", "--scale", "1"]) == 0
    expected = model_input_image(nifti_slices(anat, axis=2, slices=7)[0], tiny_clip.backbone.image_processor)
    assert np.array_equal(written(tmp_path / "axial.png"), np.asarray(expected).astype(np.int64))


def test_show_bad_input_is_a_clear_error(tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    assert main(["show", str(tmp_path / "x.png"), "--window", "lungs", "-o", str(tmp_path / "o.png")]) == 2
    assert "error: unknown window name 'lungs'" in capsys.readouterr().err
    assert main(["show", str(tmp_path / "missing.png")]) == 2
    assert "file not found" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_console_script_is_declared():
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["medadapt"] == "medadapt.cli:main"
    assert {"dicom", "nifti"} <= set(project["optional-dependencies"])
