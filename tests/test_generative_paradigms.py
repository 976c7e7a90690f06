"""Every paradigm runs unchanged on a generative base (tiny LLaVA, synthetic domains posed as questions)."""

from __future__ import annotations

import pytest

from medadapt.training.trainer import ContinualTrainer

from .training_helpers import one_thread, tiny_config  # noqa: F401

GENERATIVE = dict(model="tiny-llava", adapter={"type": "lora", "r": 4, "alpha": 8, "target_modules": None})


@pytest.mark.parametrize("paradigm", ["specialized", "joint", "continual", "rehearsal"])
def test_paradigm_runs_on_a_generative_base(tmp_path, paradigm, one_thread):  # noqa: F811
    config = tiny_config(tmp_path / "run", paradigm, n_domains=2, n_train=16, n_test=10, **GENERATIVE)
    trainer = ContinualTrainer(config, progress=False)
    results = trainer.run()
    assert trainer.model.family.name == "image-text-to-text"
    assert len(results["accuracy_matrix"]) == (1 if paradigm == "joint" else 2)
    assert all(0.0 <= v <= 1.0 for row in results["accuracy_matrix"] for v in row)
    assert {"acc", "bwt", "forgetting"} <= set(results)
    if paradigm == "rehearsal":
        assert results["buffer"]["items"] > 0 and "routing_accuracy" in results  # routing on the vision tower
    assert [n for n, p in trainer.model.base_model.named_parameters() if p.requires_grad] == []
