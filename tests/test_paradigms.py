"""The four paradigms: their plans, and each one trained end to end by ContinualTrainer on tiny data."""

from __future__ import annotations

import json

import numpy as np
import torch
import pytest

from medadapt import ContinualVLM
from medadapt.data import load_domain
from medadapt.rehearsal import RehearsalBuffer
from medadapt.training.batches import BatchSchedule
from medadapt.training.consistency import buffer_digest
from medadapt.training.config import ConfigError
from medadapt.training.paradigms import SHARED, make_plan
from medadapt.training.trainer import ContinualTrainer

from .training_helpers import one_thread, tiny_config  # noqa: F401  (one_thread is a fixture)

DOMAINS = ["xr", "us", "fu"]
RESULT_KEYS = {"paradigm", "domains", "stages", "accuracy_matrix", "acc", "bwt", "forgetting", "auroc", "final_metrics", "wall_time_s", "config", "num_processes", "buffer_consistent", "evaluated_adapter"}


# -- plans ---------------------------------------------------------------------------------------
def test_specialized_plan_one_adapter_per_domain_no_replay():
    plan = make_plan("specialized", DOMAINS, rehearsal=True)
    assert plan.adapters == [(d, "domain") for d in DOMAINS]
    assert [s.name for s in plan.stages] == DOMAINS
    assert [[(p.adapter, p.domains, p.replay) for p in s.phases] for s in plan.stages] == [[(d, [d], False)] for d in DOMAINS]
    assert plan.primary_view == "specialists"
    # after stage i, trained domains use their specialist, later ones the frozen base (None)
    assert plan.stages[1].views["specialists"] == {"xr": "xr", "us": "us", "fu": None}
    assert all(not s.memorise for s in plan.stages)


def test_joint_plan_is_one_stage_on_all_data():
    plan = make_plan("joint", DOMAINS, rehearsal=True)
    assert plan.adapters == [(SHARED, "shared")]
    assert len(plan.stages) == 1 and len(plan.stages[0].phases) == 1
    phase = plan.stages[0].phases[0]
    assert (phase.adapter, phase.domains, phase.replay) == (SHARED, DOMAINS, False)
    assert plan.stages[0].views == {SHARED: {d: SHARED for d in DOMAINS}}


@pytest.mark.parametrize("rehearsal", [False, True])
def test_continual_plan_one_shared_adapter_replay_only_when_on(rehearsal):
    plan = make_plan("continual", DOMAINS, rehearsal=rehearsal)
    assert plan.adapters == [(SHARED, "shared")]
    assert [[(p.adapter, p.domains, p.replay) for p in s.phases] for s in plan.stages] == [[(SHARED, [d], rehearsal)] for d in DOMAINS]
    assert [s.memorise for s in plan.stages] == [[d] for d in DOMAINS]
    assert plan.primary_view == SHARED


def test_rehearsal_plan_domain_adapter_then_shared_with_replay():
    plan = make_plan("rehearsal", DOMAINS, rehearsal=True)
    assert plan.adapters == [(d, "domain") for d in DOMAINS] + [(SHARED, "shared")]
    phases = [(p.adapter, p.domains, p.replay) for s in plan.stages for p in s.phases]
    assert phases == [x for d in DOMAINS for x in ((d, [d], False), (SHARED, [d], True))]
    assert set(plan.stages[0].views) == {SHARED, "specialists"}
    assert plan.primary_view == SHARED
    assert not any(p.replay for s in make_plan("rehearsal", DOMAINS, rehearsal=False).stages for p in s.phases)


def test_unknown_paradigm():
    with pytest.raises(ConfigError, match="paradigm 'nope' unknown; valid"):
        make_plan("nope", DOMAINS, rehearsal=True)


# -- deterministic batches -----------------------------------------------------------------------
def test_batches_are_deterministic_split_across_ranks_and_mix_in_replay():
    pool = [("us", i) for i in range(20)]
    buffer = RehearsalBuffer(6, "reservoir", seed=0)
    buffer.add_stage("xr", np.arange(30) % 2)
    single = BatchSchedule(pool, 4, epochs=2, seed=0, phase_key="1:shared")
    assert single.steps == 10
    rows = single.refs(3, buffer, ratio=0.5)
    assert rows == single.refs(3, buffer, ratio=0.5)  # same (seed, phase, step) -> same batch
    assert len(rows) == 8 and sum(d == "xr" for d, _ in rows) == 4  # ratio 0.5: as many replayed rows as new ones
    assert {ref for ref in rows if ref[0] == "xr"} <= {(d, i) for d, i, _ in buffer.items()}
    assert single.refs(3) == rows[:4]  # without a buffer only the new samples
    # one epoch visits every sample once
    assert sorted(r for step in range(5) for r in single.refs(step)) == sorted(pool)
    # two ranks: each gets half of the same global batch
    ranks = [BatchSchedule(pool, 2, epochs=2, seed=0, phase_key="1:shared", world_size=2, rank=r) for r in (0, 1)]
    assert ranks[0].steps == single.steps
    assert sorted(ranks[0].refs(3, buffer, 0.5) + ranks[1].refs(3, buffer, 0.5)) == sorted(rows)


# -- end-to-end runs ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):  # noqa: F811
    out = {}
    for paradigm in ("specialized", "joint", "continual", "rehearsal"):
        folder = tmp_path_factory.mktemp(paradigm) / "run"
        config = tiny_config(folder, paradigm)
        trainer = ContinualTrainer(config, progress=False)
        results = trainer.run()
        out[paradigm] = (folder, config, results)
        out[f"{paradigm}-trainer"] = trainer
    return out


def test_buffer_consistent_compares_the_buffers_gathered_over_processes(runs):
    trainer = runs["rehearsal-trainer"]
    assert runs["rehearsal"][2]["buffer_consistent"] is True and len(trainer.buffer) > 0
    # a second process whose buffer holds other samples: the gathered digests differ
    other = RehearsalBuffer(trainer.buffer.size, seed=99)
    other.add_stage("xr", [1, 0] * 12)
    assert buffer_digest(other) != buffer_digest(trainer.buffer)
    trainer._all_processes = lambda values: values + [buffer_digest(other)]
    assert trainer._results(1.0)["buffer_consistent"] is False
    trainer._all_processes = lambda values: values + [buffer_digest(trainer.buffer)]  # an identical copy agrees
    assert trainer._results(1.0)["buffer_consistent"] is True


@pytest.mark.parametrize("paradigm", ["specialized", "joint", "continual", "rehearsal"])
def test_run_writes_results_and_outputs(runs, paradigm):
    folder, config, results = runs[paradigm]
    on_disk = json.loads((folder / "results.json").read_text())
    assert RESULT_KEYS <= set(on_disk)
    assert on_disk["paradigm"] == paradigm and on_disk["domains"] == ["xr", "us"]
    assert on_disk["accuracy_matrix"] == results["accuracy_matrix"]
    matrix = np.asarray(on_disk["accuracy_matrix"])
    rows = 1 if paradigm == "joint" else 2
    assert matrix.shape == (rows, 2) and np.all((matrix >= 0) & (matrix <= 1))
    assert on_disk["acc"] == pytest.approx(matrix[-1].mean())
    assert set(on_disk["auroc"]) == {"xr", "us"} and all(0 <= v <= 1 for v in on_disk["auroc"].values())
    assert on_disk["wall_time_s"] > 0 and on_disk["num_processes"] == 1 and on_disk["buffer_consistent"] is True
    assert on_disk["config"] == config.to_dict()
    for name in ("accuracy_matrix.png", "report.md", "manifest.json", "run.json"):
        assert (folder / name).is_file(), name
    assert (folder / "accuracy_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (folder / "report.md").read_text()
    assert "Accuracy matrix" in report and "AUROC" in report
    assert (folder / "checkpoints" / "state.json").is_file()


def test_joint_gives_a_single_row(runs):
    _, _, results = runs["joint"]
    assert results["stages"] == ["joint"] and len(results["accuracy_matrix"]) == 1
    assert results["bwt"] == 0.0 and results["forgetting"] == 0.0


def test_specialized_is_evaluated_by_the_specialists(runs):
    _, _, results = runs["specialized"]
    assert results["evaluated_adapter"] == "specialists"
    matrix = results["accuracy_matrix"]
    # a specialist is frozen once its stage is over: its column never changes afterwards (no forgetting)
    assert matrix[1][0] == matrix[0][0]
    assert results["bwt"] == 0.0 and results["forgetting"] == 0.0


def test_continual_with_rehearsal_fills_the_buffer(runs):
    _, config, results = runs["continual"]
    assert results["rehearsal"] is True
    assert results["buffer"] == {"size": config.rehearsal.size, "policy": "class_balanced", "items": config.rehearsal.size}


def test_rehearsal_has_a_specialist_matrix(runs):
    _, _, results = runs["rehearsal"]
    assert results["evaluated_adapter"] == SHARED and results["rehearsal"] is True
    specialists = results["specialist_accuracy_matrix"]
    assert np.asarray(specialists).shape == (2, 2)
    assert specialists[1][0] == specialists[0][0]  # the first domain's adapter is frozen after stage 1
    assert results["views"]["specialists"]["accuracy_matrix"] == specialists
    assert results["views"][SHARED]["accuracy_matrix"] == results["accuracy_matrix"]
    assert "Specialist adapters" in (runs["rehearsal"][0] / "report.md").read_text()


@pytest.mark.parametrize("paradigm", ["specialized", "joint", "rehearsal"])
def test_saved_model_reproduces_the_evaluated_accuracy(runs, paradigm):
    folder, config, results = runs[paradigm]
    model = ContinualVLM.from_pretrained(folder)
    assert list(model.domains) == ["xr", "us"]
    adapter = None if paradigm == "specialized" else SHARED  # None: each domain's own adapter
    for spec in config.domains:
        test = load_domain(spec.name, spec.labels, spec.data).splits["test"]
        images = [test[i][0] for i in range(len(test))]
        probs = model.predict_proba(images, domain=spec.name, adapter=adapter)
        accuracy = float((probs.argmax(-1).numpy() == test.labels).mean())
        assert accuracy == pytest.approx(results["final_metrics"][spec.name]["accuracy"], abs=1e-9)


def test_npz_imagefolder_and_hf_domains_train_end_to_end(tmp_path, one_thread):  # noqa: F811
    from .training_helpers import write_hf, write_imagefolder, write_npz

    fundus = ["healthy retina", "exudates", "hemorrhages"]
    lesions = ["normal", "benign lesion", "malignant lesion"]
    domains = [
        {"name": "npz_xr", "labels": ["normal", "pneumonia"], "prompt": "an x-ray showing {}", "data": {"format": "npz", "path": str(write_npz(tmp_path / "xr.npz"))}},
        {"name": "folder_fu", "labels": fundus, "prompt": "a fundus photo showing {}", "data": {"format": "imagefolder", "path": str(write_imagefolder(tmp_path / "fu", fundus))}},
        {"name": "hf_us", "prompt": "an ultrasound with {}", "data": {"format": "hf", "path": str(write_hf(tmp_path / "us", lesions))}},
    ]
    config = tiny_config(tmp_path / "run", "rehearsal", domains=domains, train={"max_steps_per_stage": 2})
    results = ContinualTrainer(config, progress=False).run()
    assert results["domains"] == ["npz_xr", "folder_fu", "hf_us"]
    assert np.asarray(results["accuracy_matrix"]).shape == (3, 3)
    assert ContinualVLM.from_pretrained(tmp_path / "run").get_domain("hf_us").labels == lesions  # names from the ClassLabel


# -- tracking through accelerate's trackers ------------------------------------------------------------
def test_metrics_reach_accelerate_trackers(tmp_path, one_thread):  # noqa: F811
    from accelerate import Accelerator
    from accelerate.tracking import GeneralTracker

    class Recorder(GeneralTracker):
        name = "recorder"
        requires_logging_directory = False

        def __init__(self):
            super().__init__()
            self.config, self.logged = None, []

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            self.config = values

        def log(self, values, step=None, **kwargs):
            self.logged.append((step, values))

    recorder = Recorder()
    config = tiny_config(tmp_path / "run", "continual", overrides=["tracking.log_with=all", "tracking.project=medadapt-test"], n_domains=1, n_train=16)
    ContinualTrainer(config, progress=False, accelerator=Accelerator(cpu=True, log_with=[recorder])).run()
    assert recorder.config["train.lr"] == config.train.lr and recorder.config["paradigm"] == "continual"
    steps = [(step, values) for step, values in recorder.logged if "shared/loss" in values]
    assert [step for step, _ in steps] == [1, 2] and {"shared/loss", "shared/acc"} <= set(steps[0][1])
    stage = [(step, values) for step, values in recorder.logged if "stage/shared/acc" in values]
    assert [step for step, _ in stage] == [2] and {"stage/shared/bwt", "stage/shared/forgetting", "stage/shared/xr/accuracy"} <= set(stage[0][1])


def test_an_uninstalled_tracker_is_refused_before_training(tmp_path):
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    missing = [name for name in LOGGER_TYPE_TO_CLASS if name not in {str(t) for t in get_available_trackers()}]
    if not missing:
        pytest.skip("every accelerate tracker is installed here")
    config = tiny_config(tmp_path / "run", overrides=[f"tracking.log_with={missing[0]}"])
    with pytest.raises(ConfigError, match=f"tracking.log_with='{missing[0]}', but that tracker's package is not installed"):
        ContinualTrainer(config, progress=False).run()
    assert not (tmp_path / "run").exists()


def test_gradient_accumulation_matches_the_larger_batch(tmp_path, one_thread):  # noqa: F811
    """batch 4 x 2 accumulated steps = batch 8: same rows per update, same mean gradient."""
    big = ContinualTrainer(tiny_config(tmp_path / "big", "specialized", overrides=["train.batch_size=8"], n_domains=1), progress=False)
    small = ContinualTrainer(tiny_config(tmp_path / "small", "specialized", overrides=["train.batch_size=4", "train.grad_accum_steps=2"], n_domains=1), progress=False)
    want, got = big.run(), small.run()
    trained = big.model.adapter_parameters("xr")
    assert any(float(p.abs().max()) > 0 for p in trained[1::2])  # lora_B starts at 0: it did train
    for a, b in zip(trained, small.model.adapter_parameters("xr")):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert got["accuracy_matrix"][0][0] == pytest.approx(want["accuracy_matrix"][0][0], abs=0.034)  # at most one image of 30 flips


def test_a_pool_smaller_than_the_global_batch_still_fills_every_rank():
    pool = [("xr", 0), ("xr", 1)]
    ranks = [BatchSchedule(pool, 4, epochs=1, seed=0, phase_key="0:xr", world_size=2, rank=r) for r in (0, 1)]
    rows = [s.refs(0) for s in ranks]
    assert [len(r) for r in rows] == [4, 4] and set(rows[0] + rows[1]) == set(pool)
