"""``medadapt show`` on bad output paths, huge scales and every built-in tiny model name."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medadapt.cli import MAX_SHOWN_SIDE, main
from medadapt.tiny import tiny_names


@pytest.fixture
def picture(tmp_path) -> Path:
    path = tmp_path / "scan.png"
    Image.fromarray(np.arange(40 * 60, dtype=np.uint16).reshape(40, 60)).save(path)
    return path


def test_a_huge_scale_is_refused_before_anything_is_resized(picture, tmp_path, capsys):
    out = tmp_path / "big.png"
    started = time.perf_counter()
    assert main(["show", str(picture), "-o", str(out), "--scale", "100000", "--original"]) == 2
    err = capsys.readouterr().err
    assert "--scale 100000 would write a 6000000x4000000 PNG" in err and f"limit is {MAX_SHOWN_SIDE} pixels" in err
    assert f"use --scale {MAX_SHOWN_SIDE // 60} or less" in err
    assert time.perf_counter() - started < 20 and not out.exists()
    assert main(["show", str(picture), "-o", str(out), "--scale", str(MAX_SHOWN_SIDE // 60), "--original"]) == 0
    with Image.open(out) as image:
        assert max(image.size) <= MAX_SHOWN_SIDE


def test_output_that_is_a_folder_is_a_clear_error_and_leaves_nothing(picture, tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    assert main(["show", str(picture), "-o", str(folder)]) == 2
    assert "is a folder; give the PNG's file name" in capsys.readouterr().err
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["results", "scan.png"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_output_is_a_clear_error(picture, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["show", str(picture), "-o", str(locked / "x.png")]) == 2
        assert "cannot write" in capsys.readouterr().err and list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_output_below_a_file_is_a_clear_error(picture, tmp_path, capsys):
    assert main(["show", str(picture), "-o", str(picture / "x.png")]) == 2  # works as root too
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write") and "Traceback" not in err


@pytest.mark.parametrize("name", [n for n in tiny_names() if n != "tiny-clip"])
def test_every_built_in_tiny_name_is_known_without_the_hub(picture, tmp_path, name, monkeypatch, capsys):
    import transformers

    def no_hub(*args, **kwargs):
        raise AssertionError(f"asked the Hub for {args[:1]}")

    monkeypatch.setattr(transformers.AutoImageProcessor, "from_pretrained", no_hub)
    out = tmp_path / f"{name}.png"
    assert main(["show", str(picture), "-o", str(out), "--model", name, "--scale", "1"]) == 0, capsys.readouterr().err
    with Image.open(out) as image:
        assert image.mode == "RGB" and min(image.size) >= 8


def test_a_refused_write_is_a_clear_error_and_leaves_no_temporary_file(picture, tmp_path, monkeypatch, capsys):
    import medadapt._io as io_module

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    monkeypatch.setattr(io_module.os, "replace", refuse)  # what a folder we may not write into does
    assert main(["show", str(picture), "-o", str(out_dir / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "permission denied" in err.lower() and "Traceback" not in err
    assert list(out_dir.iterdir()) == []  # no stray .tmp
