"""The demo page's logic (no browser): uploads of every accepted kind, what the page shows, and the
clear messages for a file that is no image or is too large (tests/test_demo_browser.py drives the page)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medadapt.images import model_input_image
from medadapt.webdemo import NOT_FOR_CLINICAL_USE, DemoService, read_upload
from medadapt.webdemo import inputs as demo_inputs
from tests.conftest import build_tiny_vlm
from tests.test_concurrent_serving import _llava

pytestmark = pytest.mark.usefixtures("core_single_thread")


@pytest.fixture(scope="module")
def clip():
    """The tiny CLIP with its router, shared by the tests below (none changes it)."""
    return routed_clip()


def routed_clip():
    model = build_tiny_vlm("clip")
    rng = np.random.RandomState(0)
    train = {d: [rng.randint(40 * k, 40 * k + 30, (32, 32, 3), dtype=np.uint8) for _ in range(8)]
             for k, d in enumerate(["chest", "derm", "fundus", "histo", "knee"])}
    model.fit_router(train, threshold=0.99, fallback=None)
    return model


def write_png(folder: Path, seed: int = 0) -> Path:
    path = folder / f"upload{seed}.png"
    Image.fromarray(np.random.RandomState(seed).randint(0, 255, (40, 36, 3), dtype=np.uint8)).save(path)
    return path


def dicom_file() -> str:
    from pydicom.data import get_testdata_file

    return get_testdata_file("CT_small.dcm")


def test_png_upload_routed_and_chosen_domain_show_predict_proba(tmp_path, clip):
    model = clip
    service = DemoService(model)
    assert service.domain_choices()[0] == "auto" and "chest" in service.domain_choices()
    png = write_png(tmp_path)
    image = Image.open(png)
    routed = service.analyse(str(png), domain="auto")
    want = model.predict_proba([image], domain="auto")[0]
    assert routed.error == "" and routed.domain == want.domain and "Routed to" in routed.served
    assert list(routed.probabilities) == want.labels
    assert [routed.probabilities[label] for label in want.labels] == [float(p) for p in want.probs]
    chosen = service.analyse(str(png), domain="histo")
    probs = model.predict_proba([image], domain="histo")[0]
    assert chosen.probabilities == {label: float(p) for label, p in zip(model.get_domain("histo").labels, probs)}
    table = chosen.probabilities_html()
    assert table.count("<tr data-label=") == 3 and f'data-prob="{float(probs[0])!r}"' in table
    shown = np.asarray(chosen.model_input)
    assert shown.shape == (32, 32, 3)  # the tiny model's input size, not the upload's 40x36
    assert np.array_equal(shown, np.asarray(model_input_image(image, model.backbone.image_processor)))


def test_dicom_window_choice_changes_what_the_model_sees(clip):
    model = clip
    service = DemoService(model)
    default = service.analyse(dicom_file(), window="default", domain="chest")
    lung = service.analyse(dicom_file(), window="lung", domain="chest")
    assert default.error == "" and lung.error == ""
    assert not np.array_equal(np.asarray(default.model_input), np.asarray(lung.model_input))
    assert read_upload(dicom_file(), "lung").kind == "dicom"
    bad = service.analyse(dicom_file(), window="sideways", domain="chest")
    assert "unknown window" in bad.error


def test_nifti_upload_uses_the_middle_slice(tmp_path, clip):
    import nibabel
    import nibabel.testing

    path = tmp_path / "brain.nii.gz"
    nibabel.save(nibabel.load(Path(nibabel.testing.data_path) / "anatomical.nii"), path)
    upload = read_upload(path, "brain")
    assert upload.kind == "nifti" and upload.image.mode == "L"
    result = DemoService(clip).analyse(str(path), window="brain", domain="knee")
    assert result.error == "" and set(result.probabilities) == {"intact", "torn"}


def test_not_an_image_and_too_large_get_a_message_not_a_traceback(tmp_path, monkeypatch, clip):
    service = DemoService(clip)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    result = service.analyse(str(text), domain="chest")
    assert result.probabilities is None and "not an image this demo reads" in result.error
    assert 'id="medadapt-error"' in result.probabilities_html()
    monkeypatch.setattr(demo_inputs, "MAX_UPLOAD_BYTES", 1000)
    big = write_png(tmp_path, seed=1)
    assert big.stat().st_size > 1000
    assert "above the demo's limit" in service.analyse(str(big), domain="chest").error
    assert "Upload an image first" in service.analyse(None).error
    assert "Not for clinical use" in NOT_FOR_CLINICAL_USE


def test_generative_question_gets_the_models_answer(tmp_path):
    model = _llava()
    service = DemoService(model)
    png = write_png(tmp_path)
    result = service.analyse(str(png), domain="cxr", question="What is shown?")
    assert result.error == "" and set(result.probabilities) == {"no", "yes"}
    assert result.answer == model.generate([Image.open(png)], questions="What is shown?", domain="cxr")[0]
    torch.testing.assert_close(torch.tensor(list(result.probabilities.values())), model.predict_proba([Image.open(png)], "cxr")[0])
