"""The suite's own tools can fail: a missing bundled file is an error in CI, `unchanged` sees a change."""

from __future__ import annotations

import pytest

from tests import conftest
from tests.conftest import build_tiny_vlm, core_lora_config, unchanged


def test_a_missing_bundled_file_skips_locally_and_fails_in_ci(tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="not among pydicom's installed test files"):
        conftest.bundled_file(tmp_path, "CT_small.dcm", "pydicom")
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="in CI a missing bundled file is an error"):
        conftest.bundled_file(tmp_path, "CT_small.dcm", "pydicom")
    (tmp_path / "CT_small.dcm").write_bytes(b"x")
    assert conftest.bundled_file(tmp_path, "CT_small.dcm", "pydicom") == tmp_path / "CT_small.dcm"


def test_unchanged_notices_a_new_stage_and_an_edited_tensor():
    model = build_tiny_vlm("clip", with_domains=False)
    with pytest.raises(AssertionError, match="changed the model"), unchanged(model):
        model.add_domain("x", ["a", "b"], "{}", adapter=core_lora_config())
    with pytest.raises(AssertionError, match="changed the model"), unchanged(model):
        next(p for p in model.adapter_parameters("x")).data.add_(1.0)
    with unchanged(model):
        model.adapter_names()  # reading changes nothing
