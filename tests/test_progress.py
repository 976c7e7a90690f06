"""Issue 13, section 6: off a terminal, training prints one line per phase (not a progress bar per step),
and library-internal FutureWarnings stay out of the output."""

from __future__ import annotations

import io
import warnings

from medadapt.training.progress import PhaseProgress, quiet_library_warnings
from medadapt.training.trainer import ContinualTrainer

from .training_helpers import one_thread, tiny_config  # noqa: F401


def test_a_phase_prints_one_line_when_not_on_a_terminal():
    stream = io.StringIO()
    progress = PhaseProgress(50, 0, "stage 1/2 xr [xr]", stream=stream)
    for _ in range(50):
        progress.update(0.5, 100.0)
    assert stream.getvalue() == ""
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stage 1/2 xr [xr]: 50/50 steps, loss 0.500")
    assert "\r" not in stream.getvalue()


def test_a_training_log_holds_one_line_per_phase(tmp_path, capsys, one_thread):  # noqa: F811
    trainer = ContinualTrainer(tiny_config(tmp_path / "run", n_domains=2, n_train=24, n_test=12), progress=True)
    trainer.run()
    err = capsys.readouterr().err
    phases = sum(len(stage.phases) for stage in trainer.plan.stages)
    lines = [line for line in err.splitlines() if line.startswith("stage ")]
    assert len(lines) == phases and "\r" not in err and "it/s" not in err


def test_library_internal_future_warnings_are_quieted():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_library_warnings()
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
        warnings.warn("something the user should see", FutureWarning)
    assert [str(w.message) for w in caught] == ["something the user should see"]
