"""What a run sends to accelerate's trackers (TensorBoard, wandb, ...) after each stage: ACC, BWT and
forgetting of the accuracy matrix so far, every domain's metrics, and the accuracy-matrix image.

Every point carries its step: the number of training steps done in the whole run when it was logged.
Stage results are named ``stage/<view>/acc|bwt|forgetting`` and ``stage/<view>/<domain>/<metric>`` (a view
is the adapter set evaluated, e.g. ``shared`` or ``specialists``); the image is ``accuracy_matrix``.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..evaluation import plot_accuracy_matrix
from .outputs import summarise


def _finite(values: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def matrix_image(rows: Sequence[Sequence[float]], domains: Sequence[str], stages: Sequence[str], title: str) -> np.ndarray:
    """The accuracy matrix plotted as an ``(H, W, 3)`` uint8 array."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "matrix.png"
        plot_accuracy_matrix(np.asarray(rows, dtype=float), list(domains), path, title=title, stages=list(stages))
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))


def log_stage(accelerator: Any, plan: Any, rows: Mapping[str, list[list[float]]], stage_metrics: Mapping[str, Any], domains: Sequence[str], stage_index: int, step: int) -> None:
    """Log stage ``stage_index``'s results to ``accelerator``'s trackers at ``step``."""
    values: dict[str, float] = {}
    for view, view_rows in rows.items():
        padded = [list(r) for r in view_rows]
        values.update({f"stage/{view}/{k}": v for k, v in _finite(summarise(padded)).items()})
        for domain, metrics in stage_metrics.get(view, {}).items():
            values.update({f"stage/{view}/{domain}/{k}": v for k, v in _finite(metrics).items()})
    values["stage/index"] = float(stage_index + 1)
    accelerator.log(values, step=step)
    if not accelerator.is_main_process:
        return
    primary = plan.primary_view
    stages = [s.name for s in plan.stages][: len(rows[primary])]
    image = matrix_image(rows[primary], domains, stages, f"{primary}: accuracy after stage {stage_index + 1}")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"accuracy_matrix": image[None]}, step=step, dataformats="NHWC")
        elif hasattr(tracker, "log_images"):
            tracker.log_images({"accuracy_matrix": [image]}, step=step)
