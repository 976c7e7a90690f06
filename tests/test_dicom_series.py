"""A folder of DICOM slices read as one volume, from slices generated out of nibabel's own NIfTI test file.

Each axial slice of ``anatomical.nii`` becomes a DICOM file (pydicom's ``CT_small.dcm`` as the template)
on an oblique plane; file names and Instance Numbers are shuffled so that only the position along the
slice normal gives the right order.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from medadapt.errors import ImageError
from medadapt.medical import dicom_series, dicom_series_slices, nifti_volume, volume_slices

pydicom = pytest.importorskip("pydicom", reason="the dicom extra (pydicom) is not installed")
nibabel_testing = pytest.importorskip("nibabel.testing", reason="the nifti extra (nibabel) is not installed")

TEMPLATE = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
NIFTI = Path(nibabel_testing.data_path) / "anatomical.nii"
ROW = np.array([1.0, 0.0, 0.0])
COLUMN = np.array([0.0, np.cos(0.3), np.sin(0.3)])  # an oblique plane: z order is not the slice order
NORMAL = np.cross(ROW, COLUMN)
GAP = 2.5


def write_series(folder: Path, volume: np.ndarray, uid: str = "1.2.826.0.1.3680043.8.498.1", order=None) -> list[Path]:
    """Write ``volume[..., k]`` as slice k at ``origin + k * GAP * normal``, under shuffled names and numbers."""
    if not TEMPLATE.is_file() or not NIFTI.is_file():
        pytest.skip("pydicom's CT_small.dcm or nibabel's anatomical.nii is not installed")
    template = pydicom.dcmread(TEMPLATE)
    folder.mkdir(parents=True, exist_ok=True)
    n = volume.shape[-1]
    order = list(np.random.RandomState(0).permutation(n)) if order is None else order
    origin = np.array([-30.0, 12.0, 40.0])
    paths = []
    for name_index, k in enumerate(order):
        ds = copy.deepcopy(template)
        plane = np.ascontiguousarray(volume[..., k].astype(np.int16))
        ds.Rows, ds.Columns = plane.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = plane.tobytes()
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.ImageOrientationPatient = [*ROW.tolist(), *COLUMN.tolist()]
        ds.ImagePositionPatient = (origin + k * GAP * NORMAL).round(4).tolist()
        ds.PixelSpacing = [2.0, 2.0]
        ds.SliceThickness = GAP
        ds.InstanceNumber = n - name_index  # reversed against the names, and neither is anatomical
        ds.SeriesInstanceUID = uid
        ds.WindowCenter, ds.WindowWidth = 1000, 3000
        path = folder / f"IM{name_index:04d}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


@pytest.fixture
def anatomy() -> np.ndarray:
    if not NIFTI.is_file():
        pytest.skip("nibabel's anatomical.nii is not installed")
    return np.rint(nifti_volume(NIFTI)).astype(np.int64) + 1024  # stored values; the files' intercept is -1024


def test_slices_are_ordered_by_position_along_the_normal(tmp_path, anatomy):
    write_series(tmp_path / "s", anatomy)
    series = dicom_series(tmp_path / "s")
    assert series.volume.shape == anatomy.shape
    assert np.array_equal(series.volume, anatomy - 1024.0)  # the NIfTI's values, in order, Modality LUT applied
    assert np.allclose(np.diff(series.positions), GAP, atol=1e-3) and series.spacing == (2.0, 2.0, pytest.approx(GAP, abs=1e-3))
    assert np.allclose(series.normal, NORMAL)
    assert series.files != sorted(series.files)  # neither the names' order...


def test_series_slices_feed_volume_slices(tmp_path, anatomy):
    write_series(tmp_path / "s", anatomy)
    got = dicom_series_slices(tmp_path / "s", axis=2, slices="all", window=(0, 400))
    expected = volume_slices(anatomy - 1024.0, axis=2, slices="all", window=(0, 400))
    assert len(got) == anatomy.shape[2]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, expected))
    own = dicom_series_slices(tmp_path / "s", slices=[3])  # the headers' own window (1000, 3000)
    assert np.array_equal(np.asarray(own[0]), np.asarray(volume_slices(anatomy - 1024.0, slices=[3], window=(1000, 3000))[0]))


def test_a_list_of_datasets_in_any_order_gives_the_same_volume(tmp_path, anatomy):
    paths = write_series(tmp_path / "s", anatomy)
    shuffled = [pydicom.dcmread(p) for p in reversed(paths)]
    assert np.array_equal(dicom_series(shuffled).volume, dicom_series(tmp_path / "s").volume)


def test_mixed_series_are_refused_or_picked(tmp_path, anatomy):
    write_series(tmp_path / "s", anatomy[..., :6], uid="1.2.3.1")
    write_series(tmp_path / "s" / "other", anatomy[..., 6:9], uid="1.2.3.2")
    with pytest.raises(ImageError, match=r"belong to 2 series \(1.2.3.1: 6 file\(s\), 1.2.3.2: 3 file\(s\)\).*series_uid"):
        dicom_series(tmp_path / "s")
    assert dicom_series(tmp_path / "s", series_uid="1.2.3.2").volume.shape[-1] == 3


def test_a_missing_slice_is_an_inconsistent_spacing_error(tmp_path, anatomy):
    paths = write_series(tmp_path / "s", anatomy[..., :8], order=list(range(8)))
    paths[4].unlink()
    with pytest.raises(ImageError, match=r"inconsistent slice spacing: the slices are 2.500 mm apart, but .*IM0003.dcm and .*IM0005.dcm are 5.000 mm"):
        dicom_series(tmp_path / "s")


def test_a_slice_with_another_orientation_is_refused(tmp_path, anatomy):
    paths = write_series(tmp_path / "s", anatomy[..., :5])
    ds = pydicom.dcmread(paths[2])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.save_as(paths[2])
    with pytest.raises(ImageError, match="different orientations"):
        dicom_series(tmp_path / "s")


def test_duplicate_positions_and_missing_headers_are_refused(tmp_path, anatomy):
    paths = write_series(tmp_path / "s", anatomy[..., :4], order=[0, 1, 2, 3])
    ds = pydicom.dcmread(paths[1])
    ds.ImagePositionPatient = pydicom.dcmread(paths[2]).ImagePositionPatient
    ds.save_as(paths[1])
    with pytest.raises(ImageError, match="at the same position"):
        dicom_series(tmp_path / "s")
    del ds.ImagePositionPatient
    ds.save_as(paths[1])
    with pytest.raises(ImageError, match="lacks ImagePositionPatient"):
        dicom_series(tmp_path / "s")


def test_a_folder_without_dicom_files_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="holds no DICOM files"):
        dicom_series(tmp_path / "empty")
