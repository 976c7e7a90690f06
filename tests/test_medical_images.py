"""Medical images as clinicians store them: DICOM, NIfTI, 16-bit and float data, volumes, bad files.

DICOM and NIfTI checks use the real files that pydicom and nibabel ship inside their packages;
HU values are checked against ``pydicom.pixels.apply_modality_lut`` and windows against ``apply_voi_lut``.
"""

from __future__ import annotations

import copy
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medadapt.errors import ImageError, MissingExtraError
from medadapt.images import load_image, to_rgb
from medadapt.medical import (
    WINDOWS,
    apply_window,
    dicom_frames,
    dicom_values,
    nifti_slices,
    read_dicom,
    volume_slices,
)

from .conftest import bundled_file, optional_import  # noqa: E402

pydicom = optional_import("pydicom", reason="the dicom extra (pydicom) is not installed")
nibabel = optional_import("nibabel", reason="the nifti extra (nibabel) is not installed")
nibabel_testing = optional_import("nibabel.testing", reason="the nifti extra (nibabel) is not installed")
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder  # noqa: E402

DICOM_DIR = Path(pydicom.__file__).parent / "data" / "test_files"
NIFTI_DIR = Path(nibabel_testing.data_path)


def dcm(name: str) -> Path:
    """A DICOM file shipped inside pydicom's package (never downloaded)."""
    return bundled_file(DICOM_DIR, name, "pydicom")


def nii(name: str) -> Path:
    return bundled_file(NIFTI_DIR, name, "nibabel")


def grey(image: Image.Image) -> np.ndarray:
    assert image.mode == "L"
    return np.asarray(image).astype(np.int64)


def pydicom_window_as_uint8(ds, values: np.ndarray) -> np.ndarray:
    """pydicom's own windowing, rescaled from its documented output range to 0..255."""
    out = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
    bits = int(ds.BitsStored)
    low, high = (0, 2**bits - 1) if int(ds.PixelRepresentation) == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        low = low * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        high = high * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return (out - low) / (high - low) * 255.0


# -- today's silent misreads ------------------------------------------------------------------------
def test_bare_hwd_volume_is_refused_not_read_as_64_images(tiny_clip):
    volume = np.random.RandomState(0).randint(0, 256, size=(64, 64, 5), dtype=np.uint8)
    with pytest.raises(ImageError, match=r"shape \(64, 64, 5\) is not an image.*volume_slices"):
        tiny_clip.predict_proba(volume, "chest")
    slices = volume_slices(volume, axis=2, slices="all")
    assert len(slices) == 5 and np.array_equal(np.asarray(slices[3]), volume[:, :, 3])
    assert tiny_clip.predict_proba(slices, "chest").shape == (5, 3)


@pytest.mark.parametrize("depth", [3, 4])
def test_int16_ct_volume_is_not_read_as_rgb(tiny_clip, depth):
    hu = np.full((depth, 24, 24), -1000, np.int16)  # air
    hu[:, 8:16, 8:16] = 40  # soft tissue
    with pytest.raises(ImageError, match=r"int16 array of shape \(%d, 24, 24\) is not read as a colour image" % depth):
        tiny_clip.predict_proba(hu, "chest")
    # one slice is a greyscale image whose -1000 HU stays darker than 40 HU (not clipped to 0 together)
    image = load_image(hu[0])
    assert image.mode == "L" and np.asarray(image)[0, 0] == 0 and np.asarray(image)[10, 10] == 255


def test_same_16_bit_pixels_give_the_same_probabilities_as_pil_and_numpy(tiny_clip):
    pixels = np.random.RandomState(3).randint(1000, 4000, size=(30, 30)).astype(np.uint16)  # min > 0
    as_pil = Image.fromarray(pixels)
    assert as_pil.mode == "I;16"
    assert torch.equal(tiny_clip.preprocess([as_pil]), tiny_clip.preprocess([pixels]))
    assert torch.equal(tiny_clip.predict_proba(as_pil, "chest"), tiny_clip.predict_proba(pixels, "chest"))
    # and as a 16-bit PNG file read back from disk
    buffer = io.BytesIO()
    as_pil.save(buffer, format="PNG")
    assert torch.equal(tiny_clip.preprocess([buffer.getvalue()]), tiny_clip.preprocess([pixels]))


# -- 16-bit and float ranges ------------------------------------------------------------------------
def test_16_bit_png_keeps_its_dynamic_range(tmp_path):
    ramp = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (8, 1))  # 12-bit data in a 16-bit PNG
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    with Image.open(tmp_path / "ramp.png") as handle:
        assert handle.mode.startswith("I")
    out = grey(load_image(tmp_path / "ramp.png"))
    assert out.min() == 0 and out.max() == 255
    assert len(np.unique(out[0])) == 64  # 64 distinct inputs stay 64 distinct grey levels
    assert np.all(np.diff(out[0]) > 0)


def test_float_hu_array_is_stretched_or_windowed_never_clipped_at_255():
    hu = np.linspace(-1000.0, 3000.0, 101).reshape(1, 101).repeat(4, 0)
    out = grey(load_image(hu))
    assert out.min() == 0 and out.max() == 255 and (out == 255).sum() == 4  # only the maximum is white
    windowed = grey(load_image(hu, window="lung"))
    assert np.array_equal(windowed, apply_window(hu, WINDOWS["lung"]))
    center, width = WINDOWS["lung"]
    assert np.all(windowed[hu <= center - width / 2] == 0) and np.all(windowed[hu >= center + width / 2] == 255)
    assert np.array_equal(grey(load_image(hu, window=(40, 400))), apply_window(hu, (40, 400)))


def test_unknown_window_name_lists_the_known_ones():
    with pytest.raises(ImageError, match="unknown window name 'lungs'; known windows: .*lung.*\\(center, width\\)"):
        load_image(np.zeros((4, 4), np.int16), window="lungs")
    with pytest.raises(ImageError, match="width of at least 1"):
        load_image(np.zeros((4, 4), np.int16), window=(40, 0))


def test_nan_and_inf_images_give_a_clear_error(tiny_clip):
    nan_f = Image.fromarray(np.full((8, 8), np.nan, np.float32))
    assert nan_f.mode == "F"
    with pytest.raises(ImageError, match="image 0: image contains NaN or infinite values \\(64 of 64 pixels\\)"):
        tiny_clip.predict_proba(nan_f, "chest")
    with pytest.raises(ImageError, match="NaN or infinite"):
        tiny_clip.predict_proba(np.array([[0.0, np.inf], [1.0, 2.0]]), "chest")


@pytest.mark.parametrize("size", [(0, 0), (0, 5), (5, 0)])
def test_empty_pil_images_give_a_clear_error(tiny_clip, size):
    with pytest.raises(ImageError, match=f"image 0: PIL image of size {size[0]}x{size[1]} has an empty side"):
        tiny_clip.predict_proba(Image.new("L", size), "chest")


def test_decompression_bomb_is_a_clear_error_with_the_way_to_raise_the_limit(tiny_clip, tmp_path, monkeypatch):
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(tmp_path / "big.png")  # 900 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # > 2x the limit: PIL refuses
    with pytest.raises(ImageError, match=r"big.png is larger than PIL's decompression-bomb limit.*PIL.Image.MAX_IMAGE_PIXELS ="):
        tiny_clip.predict_proba(tmp_path / "big.png", "chest")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # the documented way out
    assert tiny_clip.predict_proba(tmp_path / "big.png", "chest").shape == (1, 3)


# -- DICOM ------------------------------------------------------------------------------------------
def test_ct_values_are_hounsfield_units_as_pydicom_computes_them():
    path = dcm("CT_small.dcm")
    ds = pydicom.dcmread(path)
    expected = apply_modality_lut(ds.pixel_array, ds)
    hu = dicom_values(path)
    assert ds.RescaleIntercept == -1024 and np.array_equal(hu, expected)
    assert not np.array_equal(hu, ds.pixel_array)  # the stored values are not HU


@pytest.mark.parametrize("name, window", [("CT_small.dcm", "lung"), ("CT_small.dcm", (40, 400)), ("MR_small.dcm", (300, 700))])
def test_user_window_matches_pydicom_apply_voi_lut(name, window):
    path = dcm(name)
    ds = pydicom.dcmread(path)
    center, width = WINDOWS[window] if isinstance(window, str) else window
    ds.WindowCenter, ds.WindowWidth = center, width
    expected = pydicom_window_as_uint8(ds, apply_modality_lut(ds.pixel_array, ds))
    got = grey(read_dicom(path, window=window))
    assert np.abs(got - expected).max() <= 1.0
    assert len(np.unique(got)) > 20  # a real image, not a flat one


@pytest.mark.parametrize("name", ["MR_small.dcm", "693_J2KI.dcm"])  # own window; 693_J2KI is a JPEG 2000 CT
def test_file_window_matches_pydicom_apply_voi_lut(name):
    path = dcm(name)
    ds = pydicom.dcmread(path)
    expected = pydicom_window_as_uint8(ds, apply_modality_lut(ds.pixel_array, ds))
    got = grey(read_dicom(path))
    assert np.abs(got - expected).max() <= 1.0
    assert not np.array_equal(got, grey(read_dicom(path, window="full")))  # the file's window was used


def test_same_mr_image_across_transfer_syntaxes():
    """Little/big endian, implicit VR, RLE, JPEG 2000 and JPEG-LS lossless: one image."""
    reference = grey(read_dicom(dcm("MR_small.dcm")))
    for name in ("MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm",
                 "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"):
        assert np.array_equal(grey(read_dicom(dcm(name))), reference), name


def test_monochrome1_is_inverted():
    # no MONOCHROME1 file ships inside pydicom's package: the same real CT with its interpretation flipped
    ds = pydicom.dcmread(dcm("CT_small.dcm"))
    mono1 = copy.deepcopy(ds)
    mono1.PhotometricInterpretation = "MONOCHROME1"
    assert np.array_equal(grey(read_dicom(mono1, window="abdomen")), 255 - grey(read_dicom(ds, window="abdomen")))


def test_ybr_and_palette_colour_are_converted():
    reference = np.asarray(read_dicom(dcm("SC_rgb_rle.dcm"))).astype(int)  # lossless RGB bars
    assert reference[0, 0].tolist() == [255, 0, 0] and reference[20, 0].tolist() == [0, 255, 0]
    for name in ("SC_rgb_dcmtk_+eb+cy+n1.dcm", "SC_ybr_full_422_uncompressed.dcm"):  # YBR_FULL JPEG, YBR_FULL_422 raw
        image = read_dicom(dcm(name))
        assert image.mode == "RGB" and np.abs(np.asarray(image).astype(int) - reference).mean() < 5, name
    path = dcm("examples_palette.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    expected = apply_color_lut(ds.pixel_array, ds).astype(np.float64) * 255.0 / 65535.0
    image = read_dicom(path)
    assert image.mode == "RGB" and np.abs(np.asarray(image) - expected).max() <= 0.5
    with pytest.raises(ImageError, match="a window applies to greyscale images; this one is PALETTE COLOR"):
        read_dicom(path, window="lung")


def test_multi_frame_gives_one_image_per_frame_or_the_chosen_one(tiny_clip):
    path = dcm("rtdose.dcm")
    frames = dicom_frames(path)
    assert len(frames) == 15 and all(f.size == (10, 10) for f in frames)
    ds = pydicom.dcmread(path)
    hu = apply_modality_lut(ds.pixel_array, ds)  # (15, 10, 10), one range for all frames
    expected = np.round((hu - hu.min()) / (hu.max() - hu.min()) * 255)
    assert np.array_equal(np.stack([grey(f) for f in frames]), expected)
    assert np.array_equal(dicom_values(path, frame=4), hu[4])
    colour = dicom_frames(dcm("examples_ybr_color.dcm"), frames=[0, 29])
    assert len(colour) == 2 and colour[1].mode == "RGB"
    with pytest.raises(ImageError, match=r"rtdose.dcm holds 15 frames, not one image: pick one with .*frame=k"):
        tiny_clip.predict_proba(path, "chest")
    with pytest.raises(ImageError, match=r"frame 15 is out of range; the file has 15 frame\(s\) \(0..14\)"):
        read_dicom(path, frame=15)
    assert tiny_clip.predict_proba(frames, "chest").shape == (15, 3)
    assert np.array_equal(grey(read_dicom(path, frame=2)), grey(read_dicom(ds, frame=2)))


def test_dicom_accepted_as_path_bytes_or_dataset_everywhere(tiny_clip):
    path = dcm("CT_small.dcm")
    reference = tiny_clip.preprocess([str(path)])
    for kind, image in {"Path": path, "bytes": path.read_bytes(), "Dataset": pydicom.dcmread(path)}.items():
        assert torch.equal(tiny_clip.preprocess([image]), reference), kind
    expected = to_rgb(read_dicom(path))  # the file's own intensities, not PIL's
    assert torch.equal(reference, tiny_clip.preprocess([expected]))
    assert tiny_clip.predict_proba([path, np.zeros((8, 8), np.uint8)], "chest").shape == (2, 3)


def test_truncated_dicom_names_the_file():
    with pytest.raises(ImageError, match=r"cannot decode the pixel data of .*MR_truncated.dcm.*truncated"):
        read_dicom(dcm("MR_truncated.dcm"))


def test_dicom_without_pixel_data_names_the_file(tiny_clip):
    with pytest.raises(ImageError, match=r"image 0: .*test-SR.dcm holds no pixel data \(Comprehensive SR Storage\)"):
        tiny_clip.predict_proba(dcm("test-SR.dcm"), "chest")


def test_missing_decoder_names_the_extra_to_install(monkeypatch):
    path = dcm("SC_rgb_jpeg_dcmtk.dcm")
    syntax = pydicom.dcmread(path).file_meta.TransferSyntaxUID
    assert syntax.is_compressed
    monkeypatch.setattr(get_decoder(syntax), "_available", {})  # as if no JPEG plugin were installed
    with pytest.raises(ImageError, match=r'SC_rgb_jpeg_dcmtk.dcm: pixel data compressed as JPEG Baseline.*pip install "medadapt\[dicom\]"'):
        read_dicom(path)


def test_missing_pydicom_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(MissingExtraError, match=r'pip install "medadapt\[dicom\]"'):
        read_dicom(dcm("CT_small.dcm"))


# -- NIfTI ------------------------------------------------------------------------------------------
def test_nifti_slices_follow_the_canonical_orientation_and_one_volume_range():
    path = nii("anatomical.nii")
    image = nibabel.load(path)
    assert nibabel.aff2axcodes(image.affine) == ("L", "A", "S")
    data = image.get_fdata()[::-1]  # L->R flip gives RAS+
    expected = np.round((data - data.min()) / (data.max() - data.min()) * 255)
    slices = nifti_slices(path, axis=2, slices="all")
    assert len(slices) == data.shape[2]
    for k in (0, 12, 24):
        assert np.array_equal(grey(slices[k]), np.rot90(expected[:, :, k])), k
    assert np.array_equal(grey(nifti_slices(path)[0]), grey(slices[data.shape[2] // 2]))  # "middle" is the default
    sagittal = nifti_slices(path, axis=0, slices=[5, -1])
    assert np.array_equal(grey(sagittal[1]), np.rot90(expected[-1]))
    windowed = nifti_slices(path, axis=2, slices=3, window=(60, 80))[0]
    assert np.array_equal(grey(windowed), np.rot90(apply_window(data[:, :, 3], (60, 80))))


def test_nifti_scaling_and_4d_series():
    path = nii("functional.nii")  # int16 with scl_slope/scl_inter, 20 time points
    with pytest.raises(ImageError, match=r"functional.nii is a 4D series of 20 volumes; pick one with volume=t"):
        nifti_slices(path)
    image = nibabel.load(path)
    assert image.dataobj.slope != 1.0
    hu = nibabel.as_closest_canonical(image).get_fdata()[..., 7]
    center = float(hu.mean())
    got = grey(nifti_slices(path, axis=2, slices=1, volume=7, window=(center, 200))[0])
    assert np.array_equal(got, np.rot90(apply_window(hu[:, :, 1], (center, 200))))


def test_nifti_bad_slice_and_nifti_passed_as_an_image(tiny_clip):
    path = nii("anatomical.nii")
    with pytest.raises(ImageError, match=r"anatomical.nii: slice 25 is out of range along axis 2, which has 25 slices \(0..24\)"):
        nifti_slices(path, axis=2, slices=[0, 25])
    with pytest.raises(ImageError, match=r"anatomical.nii is a NIfTI volume, not one 2D image; take slices with medadapt.medical.nifti_slices"):
        tiny_clip.predict_proba(path, "chest")
    with pytest.raises(ImageError, match="unknown window name"):
        nifti_slices(path, window="brian")
    assert tiny_clip.predict_proba(nifti_slices(path, slices=[1, 2]), "chest").shape == (2, 3)
