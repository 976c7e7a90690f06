"""Stop training at the first non-finite loss or weight, before it reaches a checkpoint or an evaluation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import torch

from ..errors import TrainingError


def _stop(what: str, where: str, lr: float, out: Path) -> None:
    raise TrainingError(
        f"training stopped: {what} at {where}. The learning rate (train.lr={lr:g}) is probably too high (or the "
        f"data holds NaN/inf values). Nothing after the last checkpoint was saved: the last good checkpoint in "
        f"{out / 'checkpoints'} and the last completed stage in {out} are kept. Lower train.lr and start again "
        "with --overwrite."
    )


def check_finite_loss(loss: torch.Tensor, where: str, lr: float, out: Path) -> None:
    """Raise :class:`TrainingError` if ``loss`` is NaN or infinite."""
    value = float(loss.detach())
    if not math.isfinite(value):
        _stop(f"the loss became {value}", where, lr, out)


def check_finite_params(params: Iterable[torch.nn.Parameter], where: str, lr: float, out: Path) -> None:
    """Raise :class:`TrainingError` if an optimizer step left a NaN or infinite adapter weight."""
    with torch.no_grad():
        if not all(bool(torch.isfinite(p).all()) for p in params):
            _stop("an optimizer step made adapter weights NaN or infinite", where, lr, out)
