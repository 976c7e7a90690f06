"""Break one feature on purpose, to check that its tests can fail (a pytest plugin).

    python -m pytest -p tests.mutants --mutant generate-base tests/test_generative_reference.py

must FAIL: a test that stays green with its feature broken proves nothing. ``--mutant list``
prints the mutants. Each mutant patches public names in this process only (recipes run in a
subprocess are not patched). Add a mutant here when you write tests for a new feature; see
tests/README.md.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest


def _generate_base() -> None:
    """ContinualVLM.generate answers every row with the frozen base (as if a wrapper passed adapter="base")."""
    from medadapt import ContinualVLM

    original = ContinualVLM.generate

    def generate(self, images, questions=None, domain=None, adapter=None, max_new_tokens=32):
        return original(self, images, questions, domain, "base", max_new_tokens)

    ContinualVLM.generate = generate


def _predict_base() -> None:
    """ContinualVLM.predict_proba scores every row with the frozen base."""
    from medadapt import ContinualVLM

    original = ContinualVLM.predict_proba

    def predict_proba(self, images, domain=None, adapter=None, **kwargs):
        return original(self, images, domain, "base", **kwargs)

    ContinualVLM.predict_proba = predict_proba


def _nan_deletes_checkpoint() -> None:
    """The non-finite-loss stop deletes output_dir/checkpoints before raising."""
    from medadapt.errors import TrainingError
    from medadapt.training import trainer

    original = trainer.check_finite_loss

    def check_finite_loss(loss, where, lr, out):
        try:
            original(loss, where, lr, out)
        except TrainingError:
            shutil.rmtree(Path(out) / "checkpoints", ignore_errors=True)
            raise

    trainer.check_finite_loss = check_finite_loss


def _no_mixed_precision() -> None:
    """Every Accelerator is built with mixed_precision="no", whatever the config asks."""
    import accelerate

    original = accelerate.Accelerator.__init__

    def __init__(self, *args, **kwargs):
        kwargs["mixed_precision"] = "no"
        original(self, *args, **kwargs)

    accelerate.Accelerator.__init__ = __init__


MUTANTS: dict[str, Callable[[], None]] = {
    "generate-base": _generate_base,
    "predict-base": _predict_base,
    "nan-deletes-checkpoint": _nan_deletes_checkpoint,
    "no-mixed-precision": _no_mixed_precision,
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--mutant", default=None, help=f"break one feature on purpose: {', '.join(MUTANTS)} (or 'list')")


def pytest_configure(config: pytest.Config) -> None:
    name = config.getoption("--mutant")
    if name is None:
        return
    if name == "list" or name not in MUTANTS:
        lines = "\n".join(f"  {key}: {fn.__doc__}" for key, fn in MUTANTS.items())
        raise pytest.UsageError(f"--mutant {name!r}: choose one of\n{lines}")
    MUTANTS[name]()


def pytest_report_header(config: pytest.Config) -> str | None:
    name = config.getoption("--mutant")
    return f"MUTANT ACTIVE: {name} ({MUTANTS[name].__doc__}); the tests of this feature must fail" if name else None
