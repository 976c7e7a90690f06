"""Medical image formats: DICOM (pydicom), NIfTI (nibabel), intensity windows and volume slices.

    from medadapt.medical import read_dicom, dicom_frames, nifti_slices
    model.predict(read_dicom("ct.dcm", window="lung"), "chest")
    model.predict(nifti_slices("brain.nii.gz", axis=2, slices="all", window="brain"), "brain")
    model.predict(dicom_series_slices("ct_series/", slices="all", window="lung"), "chest")

DICOM paths, bytes and pydicom ``Dataset`` objects are also accepted directly wherever medadapt
takes an image (the file's own window is then used). pydicom and nibabel are optional:
``pip install "medadapt[dicom]"`` / ``"medadapt[nifti]"``.
"""

from .dicom import DICOM_EXTRA, dicom_frames, dicom_values, is_dicom, read_dicom
from .series import DicomSeries, dicom_series, dicom_series_slices
from .nifti import NIFTI_EXTRA, is_nifti, nifti_slices, nifti_volume
from .volumes import volume_slices
from .windows import FULL_RANGE, WINDOWS, apply_window, resolve_window, scale_to_uint8, stretch_to_uint8

__all__ = [
    "DICOM_EXTRA",
    "DicomSeries",
    "NIFTI_EXTRA",
    "FULL_RANGE",
    "WINDOWS",
    "apply_window",
    "dicom_frames",
    "dicom_series",
    "dicom_series_slices",
    "dicom_values",
    "is_dicom",
    "is_nifti",
    "nifti_slices",
    "nifti_volume",
    "read_dicom",
    "resolve_window",
    "scale_to_uint8",
    "stretch_to_uint8",
    "volume_slices",
]
