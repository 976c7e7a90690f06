"""The generative recipe config on real VQA-RAD and PneumoniaMNIST (capped): tasks mixed in one continual run.

Skips when ../shared/data is absent. Checks what the run reports, not how well a random tiny model
answers: results.json holds the accuracy matrix of each task's main metric (closed: accuracy, open:
token recall), the per-task metrics, and the reloaded save reproduces every task's metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medadapt import ContinualVLM
from medadapt.data import load_domain
from medadapt.training.evaluate import GENERATE_TOKENS
from medadapt.vqa_metrics import exact_match, token_f1, token_recall
from medadapt.training.config import load_config
from medadapt.training.trainer import ContinualTrainer

from .training_helpers import one_thread  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} not found (pneumoniamnist.npz and vqa-rad/)"),
]


def test_vqa_rad_config_runs_three_mixed_tasks(tmp_path, one_thread, monkeypatch):  # noqa: F811
    monkeypatch.chdir(REPO)  # the config's data paths are relative to the repository root
    caps = ["domains.pneumonia.data.max_samples={train: 64, test: 40}",
            "domains.closed.data.max_samples={train: 64, test: 40}",
            "domains.open.data.max_samples={train: 64, test: 24}"]
    config = load_config(REPO / "recipes" / "configs" / "vqa_rad.yaml", [
        f"output_dir={tmp_path / 'run'}", "compare_naive=false", "train.epochs=1", "train.batch_size=16",
        "rehearsal.size=32", *caps,
    ])
    results = ContinualTrainer(config, progress=False).run()
    assert results["domains"] == ["pneumonia", "closed", "open"]
    assert len(results["accuracy_matrix"]) == 3 and all(len(row) == 3 for row in results["accuracy_matrix"])
    final = results["final_metrics"]
    assert {"accuracy", "auroc"} <= set(final["closed"])
    assert {"accuracy", "exact_match", "token_f1", "bleu1"} <= set(final["open"])  # accuracy = token recall
    assert all(0.0 <= final[d]["accuracy"] <= 1.0 for d in results["domains"])
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["final_metrics"]["open"]["token_f1"] == pytest.approx(final["open"]["token_f1"])
    # the save, reloaded, gives the metrics the run reported (same test rows, same adapter, same batches)
    model = ContinualVLM.from_pretrained(tmp_path / "run")
    assert model.get_domain("open").task == "vqa" and model.family.name == "image-text-to-text"
    adapter = None if results["evaluated_adapter"] == "specialists" else results["evaluated_adapter"]
    for spec in config.domains:
        test = load_domain(spec.name, spec.labels, spec.data).splits["test"]
        images = [test[i][0] for i in range(len(test))]
        questions = getattr(test, "questions", None)
        if model.get_domain(spec.name).task == "vqa":
            answers = model.generate(images, questions=questions, domain=spec.name, adapter=adapter, max_new_tokens=GENERATE_TOKENS)
            assert token_recall(answers, test.answers) == pytest.approx(final[spec.name]["accuracy"], abs=1e-9)
            assert token_f1(answers, test.answers) == pytest.approx(final[spec.name]["token_f1"], abs=1e-9)
            assert exact_match(answers, test.answers) == pytest.approx(final[spec.name]["exact_match"], abs=1e-9)
        else:
            probs = model.predict_proba(images, domain=spec.name, adapter=adapter, questions=questions)
            accuracy = float((probs.argmax(-1).numpy() == test.labels).mean())
            assert accuracy == pytest.approx(final[spec.name]["accuracy"], abs=1e-9), spec.name
