"""A label CSV saved in latin-1 (a spreadsheet export) is a clear error naming the fix, and reads with it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medadapt.data import DataError, load_domain

pydicom = pytest.importorskip("pydicom", reason="the dicom extra (pydicom) is not installed")
DICOM_DIR = Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.fixture
def root(tmp_path) -> Path:
    for name in ("CT_small.dcm", "MR_small.dcm"):
        if not (DICOM_DIR / name).is_file():
            pytest.skip(f"{name} is not among pydicom's locally installed test files")
    (tmp_path / "files").mkdir()
    for k in range(2):
        shutil.copy(DICOM_DIR / "CT_small.dcm", tmp_path / "files" / f"poumon_é{k}.dcm")  # accented file names
        shutil.copy(DICOM_DIR / "MR_small.dcm", tmp_path / "files" / f"tête{k}.dcm")
    rows = ["file,label,split"] + [f"files/poumon_é{k},thorax,{'test' if k else 'train'}" for k in range(2)]
    rows += [f"files/tête{k},crâne,{'test' if k else 'train'}" for k in range(2)]
    text = "\n".join(r.replace(",thorax", ".dcm,thorax").replace(",crâne", ".dcm,crâne") for r in rows) + "\n"
    (tmp_path / "latin1.csv").write_bytes(text.encode("latin-1"))
    (tmp_path / "utf8.csv").write_bytes(("\ufeff" + text).encode("utf-8"))  # with a byte-order mark
    return tmp_path


def config(root: Path, csv: str, **options) -> dict:
    return {"format": "dicom", "path": str(root), "options": {"csv": csv, **options}}


def test_latin1_csv_is_a_clear_error_with_the_line_and_the_fix(root):
    with pytest.raises(DataError, match=r"latin1.csv is not valid utf-8: byte b'\\xe9' on line 2.*encoding: latin-1"):
        load_domain("scans", ["thorax", "crâne"], config(root, "latin1.csv"))


def test_latin1_csv_reads_with_its_encoding_like_the_utf8_one(root):
    latin = load_domain("scans", ["thorax", "crâne"], config(root, "latin1.csv", encoding="latin-1"))
    utf8 = load_domain("scans", ["thorax", "crâne"], config(root, "utf8.csv"))
    assert latin["train"].labels.tolist() == utf8["train"].labels.tolist() == [0, 1]
    assert len(latin["test"]) == 2


@pytest.mark.parametrize("encoding", ["klingon", 5])
def test_unknown_encoding_is_a_clear_error(root, encoding):
    with pytest.raises(DataError, match="'encoding' must be a codec name"):
        load_domain("scans", ["thorax", "crâne"], config(root, "utf8.csv", encoding=encoding))
