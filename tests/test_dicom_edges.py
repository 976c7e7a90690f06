"""DICOM and NIfTI files with bad or unusual headers, on the real files pydicom and nibabel ship.

Display values are checked against pydicom's own ``apply_modality_lut`` / ``apply_voi_lut`` /
``apply_presentation_lut``; broken headers must give an :class:`ImageError` naming the field.
"""

from __future__ import annotations

import copy
import io
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medadapt.errors import ImageError
from medadapt.medical import dicom_values, nifti_slices, read_dicom

pydicom = pytest.importorskip("pydicom", reason="the dicom extra (pydicom) is not installed")
nibabel_testing = pytest.importorskip("nibabel.testing", reason="the nifti extra (nibabel) is not installed")
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.pixels import apply_modality_lut, apply_presentation_lut, apply_voi_lut  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402

DICOM_DIR = Path(pydicom.__file__).parent / "data" / "test_files"
NIFTI_DIR = Path(nibabel_testing.data_path)


def dcm(name: str) -> Path:
    path = DICOM_DIR / name
    if not path.is_file():
        pytest.skip(f"{name} is not among pydicom's locally installed test files")
    return path


def ct() -> "pydicom.Dataset":
    return pydicom.dcmread(dcm("CT_small.dcm"))


def with_raw_value(ds, keyword: str, raw: bytes) -> bytes:
    """``ds`` written to bytes with ``keyword`` holding ``raw`` as stored (pydicom refuses to set it)."""
    setattr(ds, keyword, "271828")
    buffer = io.BytesIO()
    ds.save_as(buffer)
    data = buffer.getvalue()
    assert data.count(b"271828") == 1
    return data.replace(b"271828", raw.ljust(6))


def grey(image: Image.Image) -> np.ndarray:
    assert image.mode == "L"
    return np.asarray(image).astype(np.int64)


def voi_lut(entries: list[int], bits: int, first: int) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(entries), first, bits]
    item.LUTData = entries
    return item


# -- VOI LUT ------------------------------------------------------------------------------------------
def test_voi_lut_with_a_0_bit_descriptor_is_a_clear_error_without_warnings():
    ds = ct()
    ds.VOILUTSequence = Sequence([voi_lut(list(range(256)), 0, 0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # today: a divide-by-zero RuntimeWarning, or a raw NotImplementedError
        with pytest.raises(ImageError, match=r"0 bits per entry.*window='full'"):
            read_dicom(ds)
    assert grey(read_dicom(ds, window="full")).max() == 255  # the named fix works


def test_file_voi_lut_matches_pydicom_apply_voi_lut():
    ds = ct()
    hu = apply_modality_lut(ds.pixel_array, ds).astype(np.int64)
    first = int(hu.min())
    entries = [int(v) for v in np.linspace(65535, 0, int(hu.max()) - first + 1)]  # 16-bit inverse ramp
    ds.VOILUTSequence = Sequence([voi_lut(entries, 16, first)])
    expected = np.asarray(apply_voi_lut(hu, ds), dtype=np.float64) / 65535 * 255
    got = grey(read_dicom(ds))
    assert np.abs(got - expected).max() <= 0.5
    assert got[hu == hu.max()].max() == 0 and got[hu == hu.min()].min() == 255


# -- Presentation LUT -----------------------------------------------------------------------------------
def pydicom_display(ds) -> np.ndarray:
    """pydicom's own pipeline: modality LUT, the file's window, presentation LUT, scaled to 0..255."""
    out = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    bits = int(ds.BitsStored)
    low = -(2 ** (bits - 1)) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    high = (2 ** (bits - 1) - 1) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return (np.asarray(apply_presentation_lut(out, ds), dtype=np.float64) - (low if "PresentationLUTShape" not in ds or
            ds.PresentationLUTShape == "IDENTITY" else 0.0)) / (high - low) * 255.0


def test_presentation_lut_inverse_matches_pydicom():
    ds = ct()
    ds.WindowCenter, ds.WindowWidth = 40, 400  # saturates at both ends: pydicom's max() is the range's top
    ds.PresentationLUTShape = "INVERSE"
    hu = apply_modality_lut(ds.pixel_array, ds)
    got = grey(read_dicom(ds))
    assert np.abs(got - pydicom_display(ds)).max() <= 1.0
    assert got[hu == hu.max()].max() == 0  # the highest value is black, as in pydicom
    plain = copy.deepcopy(ds)
    plain.PresentationLUTShape = "IDENTITY"
    assert np.abs(grey(read_dicom(plain)) - pydicom_display(plain)).max() <= 1.0
    assert np.array_equal(got, 255 - grey(read_dicom(plain)))


def test_monochrome1_with_presentation_lut_inverse_is_inverted_once():
    ds = ct()
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.PresentationLUTShape = "INVERSE"  # what DX files say with MONOCHROME1: one inversion, not two
    mono2 = ct()
    assert np.array_equal(grey(read_dicom(ds, window="abdomen")), 255 - grey(read_dicom(mono2, window="abdomen")))


def test_presentation_lut_sequence_goes_through_pydicom():
    ds = ct()
    item = Dataset()
    item.LUTDescriptor = [256, 0, 12]
    item.add_new("LUTData", "US", [int(v) for v in np.linspace(4095, 0, 256)])  # an inverting P-value table
    ds.PresentationLUTSequence = Sequence([item])
    plain = grey(read_dicom(ct(), window="abdomen"))
    expected = np.asarray(apply_presentation_lut(plain.astype(np.uint8), ds), dtype=np.float64) / 4095 * 255
    got = grey(read_dicom(ds, window="abdomen"))
    assert np.abs(got - expected).max() <= 0.5 and np.abs(got - (255 - plain)).max() <= 1


def test_unknown_presentation_lut_shape_is_a_clear_error():
    ds = ct()
    ds.PresentationLUTShape = "LOG"
    with pytest.raises(ImageError, match="Presentation LUT Shape 'LOG'"):
        read_dicom(ds)


# -- headers that are not numbers, syntaxes that are not syntaxes -------------------------------------------
def test_window_width_that_is_not_a_number_is_a_clear_error():
    ds = ct()
    ds.WindowCenter = 40
    data = with_raw_value(ds, "WindowWidth", b"abc")
    with pytest.raises(ImageError, match=r"WindowWidth is 'abc', not a finite number.*window="):
        read_dicom(data)
    assert grey(read_dicom(data, window="lung")).max() > 0  # a window of the user's own ignores the broken one


def test_rescale_slope_that_is_not_a_number_is_a_clear_error():
    data = with_raw_value(ct(), "RescaleSlope", b"x1")
    with pytest.raises(ImageError, match="RescaleSlope is 'x1', not a finite number"):
        read_dicom(data, window="lung")
    with pytest.raises(ImageError, match="RescaleSlope"):
        dicom_values(data)


@pytest.mark.parametrize("uid", ["1.2.3.4.5", "1.2.840.10008.1.2.99"])
def test_unknown_transfer_syntax_uid_is_a_clear_error(uid):
    ds = ct()
    ds.file_meta.TransferSyntaxUID = uid
    with pytest.raises(ImageError, match=rf"transfer syntax UID '{uid}' is not a DICOM transfer syntax"):
        read_dicom(ds)


# -- decompression bombs ----------------------------------------------------------------------------
def rle_bomb(rows: int, columns: int) -> bytes:
    """pydicom's own RLE MR file whose header claims ``rows x columns`` (the data stay 64x64: a few KB)."""
    ds = pydicom.dcmread(dcm("MR_small_RLE.dcm"))
    ds.Rows, ds.Columns = rows, columns
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_rle_bomb_is_refused_before_anything_is_allocated():
    data = rle_bomb(30000, 30000)  # 9e8 pixels: 1.8 GB once decoded
    assert len(data) < 20_000
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match=r"30000x30000 pixels.*PIL.Image.MAX_IMAGE_PIXELS"):
            read_dicom(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000, f"{peak:,} bytes allocated before refusing"


def test_bomb_limit_is_pil_max_image_pixels_and_configurable(monkeypatch):
    data = rle_bomb(2000, 2000)  # 4 million pixels: under the default limit, decoding fails on the short data
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match="decompression-bomb limit of 2 x PIL.Image.MAX_IMAGE_PIXELS = 2,000,000"):
            read_dicom(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000, f"{peak:,} bytes allocated before refusing"  # the decode would take 8 MB
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="64x64 pixels"):
        read_dicom(dcm("MR_small_RLE.dcm"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # disabled, as in PIL
    assert read_dicom(dcm("MR_small_RLE.dcm")).size == (64, 64)


def test_bomb_limit_counts_every_frame_of_a_whole_file_decode(monkeypatch):
    path = dcm("rtdose.dcm")  # 15 frames of 10x10
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)
    with pytest.raises(ImageError, match="x 15 frames.*one frame at a time"):
        dicom_values(path)
    assert dicom_values(path, frame=3).shape == (10, 10)


# -- NIfTI --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("volume", [1.7, 1.0, "1", True])
def test_nifti_volume_index_must_be_an_integer_like_frames(volume):
    path = NIFTI_DIR / "example4d.nii.gz"
    with pytest.raises(ImageError, match="volume index must be an integer"):
        nifti_slices(path, volume=volume)
    assert np.array_equal(np.asarray(nifti_slices(path, volume=np.int64(1))[0]), np.asarray(nifti_slices(path, volume=1)[0]))
