"""Checks on adapter configs and tensors before they enter a model (when added, and when read from a stage folder).

* ``modules_to_save`` in a ``LoraConfig`` is refused: peft then trains and saves a full copy of a base
  module (e.g. ``visual_projection``) that replaces the frozen one for every row of a mixed batch, so
  other domains would be served by this domain's copy, and its saved tensors carry base-module
  names that a stage folder must never hold.
* A LoRA config read from ``adapter_config.json`` must hold numbers where numbers belong (``"r":
  "four"`` would otherwise fail deep inside torch).
* Saved adapter tensors must be finite: a NaN or inf in a stage makes every prediction NaN.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import AdapterError, StageFileError

MODULES_TO_SAVE_REASON = (
    "modules_to_save is not supported: peft would train a full copy of those base modules that replaces the frozen "
    "base for every domain served in the same batch (and save base-module tensors into the stage). Train a LoRA on "
    "them instead (put them in target_modules) or leave modules_to_save empty"
)


def refuse_modules_to_save(config: Any, what: str, error: type[Exception] = AdapterError) -> None:
    """Raise ``error`` when a LoRA config (object or dict) names ``modules_to_save``."""
    value = config.get("modules_to_save") if isinstance(config, dict) else getattr(config, "modules_to_save", None)
    if value:
        raise error(f"{what}: {MODULES_TO_SAVE_REASON} (got modules_to_save={sorted(map(str, value))!r:.200}).")


def _is_number(value: Any, integer: bool = False) -> bool:
    kinds = (int,) if integer else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)


def check_lora_dict(data: dict[str, Any], what: str) -> None:
    """Refuse (StageFileError) a saved LoRA config whose values have the wrong type or range."""
    problems = []
    if not _is_number(data.get("r", 8), integer=True) or data.get("r", 8) < 1:
        problems.append(f"r must be a positive integer, got {data.get('r')!r:.40}")
    if not _is_number(data.get("lora_alpha", 8)):
        problems.append(f"lora_alpha must be a number, got {data.get('lora_alpha')!r:.40}")
    dropout = data.get("lora_dropout", 0.0)
    if not _is_number(dropout) or not 0 <= dropout < 1:
        problems.append(f"lora_dropout must be a number in [0, 1), got {dropout!r:.40}")
    targets = data.get("target_modules")
    if targets is not None and not isinstance(targets, str) and not (
        isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)
    ):
        problems.append(f"target_modules must be a module name, a regex or a non-empty list of names, got {targets!r:.80}")
    for key, integer in (("rank_pattern", True), ("alpha_pattern", False)):
        pattern = data.get(key) or {}
        if not isinstance(pattern, dict) or not all(
            isinstance(k, str) and _is_number(v, integer) and (v >= 1 if integer else True) for k, v in pattern.items()
        ):
            problems.append(f"{key} must map module names to {'positive integers' if integer else 'numbers'}, got {pattern!r:.80}")
    if problems:
        raise StageFileError(f"{what}: adapter_config.json is not a valid LoRA config: {'; '.join(problems)}.")
    refuse_modules_to_save(data, what, StageFileError)


def check_finite(weights: dict[str, torch.Tensor], what: str) -> None:
    """Refuse (StageFileError) saved tensors holding NaN or infinity, naming the first such tensor."""
    for key, tensor in weights.items():
        if tensor.is_floating_point() or tensor.is_complex():
            if not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise StageFileError(
                    f"{what}: tensor {key!r} holds {bad} NaN or infinite value(s); such a stage makes every "
                    "prediction NaN. Not loading it (re-train or re-save the stage)."
                )
