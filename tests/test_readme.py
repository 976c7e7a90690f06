"""Every ```python block of README.md runs as printed (README, section "Run the tests").

The snippets name real Hub models and repos; here, documented substitutions make them run offline:

* ``ContinualVLM.from_base(<any id>)`` builds medadapt's built-in tiny CLIP (random weights, seed 0),
  or, for a generative id (MedGemma, LLaVA, PaliGemma, SmolVLM), the tiny Gemma 3;
* ``ct/slice042.dcm``, ``cine.dcm`` and ``brain.nii.gz`` are real files that ship with pydicom and
  nibabel (a CT slice, a multi-frame file, a NIfTI volume), copied under those names;
* ``images`` (3), ``cxr_images`` and ``us_images`` (12 each) are small synthetic image lists;
* the Hub is the local fake Hub server of ``tests/hub_server.py``, where ``other-org/derm-stages``
  already holds a ``derm`` stage;
* the blocks run in order, in one namespace, in a temporary working directory.

Nothing else in a block is changed: a block that fails here fails for a reader too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medadapt import ContinualVLM
from medadapt.tiny import tiny_backbone, tiny_base
from tests.conftest import make_image_list
from tests.hub_server import fake_hub  # noqa: F401  (pytest fixture)

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    """The code of every fenced ```python block, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


GENERATIVE_IDS = ("medgemma", "gemma-3", "llava", "paligemma", "smolvlm", "idefics")


def _tiny_for(source: str):
    """The tiny base standing in for a Hub id: a generative one for generative ids, else the tiny CLIP."""
    return tiny_base("tiny-gemma3") if any(k in source.lower() for k in GENERATIVE_IDS) else tiny_backbone("clip")


def _medical_files(folder: Path) -> None:
    """Real DICOM / NIfTI files from pydicom's and nibabel's own test data, under the README's names."""
    import shutil

    import nibabel.testing
    from pydicom.data import get_testdata_file

    (folder / "ct").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct" / "slice042.dcm")
    shutil.copy(get_testdata_file("rtdose.dcm"), folder / "cine.dcm")  # a real multi-frame file (15 frames)
    import nibabel

    anatomical = nibabel.load(Path(nibabel.testing.data_path) / "anatomical.nii")  # a real 3D MR volume
    nibabel.save(anatomical, folder / "brain.nii.gz")


def test_python_blocks_are_found():
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 3 and all(block.strip() for block in blocks)
    assert any("from_pretrained" in b for b in blocks) and any("push_to_hub" in b for b in blocks)


def test_every_readme_python_block_runs_on_the_tiny_model(fake_hub, tmp_path, monkeypatch, core_single_thread):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ContinualVLM, "from_base", classmethod(lambda cls, source, *args, **kwargs: cls(_tiny_for(source))))
    _medical_files(tmp_path)
    derm = ContinualVLM(tiny_backbone("clip"))
    derm.add_domain("derm", ["benign", "malignant"], "a skin photo of {}.")
    derm.push_to_hub("other-org/derm-stages")
    namespace = {
        "__name__": "readme",
        "images": make_image_list(3),
        "cxr_images": make_image_list(12, seed=1),
        "us_images": make_image_list(12, seed=2),
    }
    for number, block in enumerate(python_blocks(README.read_text(encoding="utf-8")), start=1):
        try:
            exec(compile(block, f"README.md python block {number}", "exec"), namespace)
        except Exception as exc:  # noqa: BLE001 - report which block failed, as printed
            pytest.fail(f"README python block {number} fails as printed: {type(exc).__name__}: {exc}\n---\n{block}")
    assert namespace["mixed"][0].shape == (2,) and namespace["mixed"][1].shape == (2,)
    assert "merged" in namespace["model"].shared
