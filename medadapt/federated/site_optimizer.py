"""A site's AdamW state, kept across the rounds of a stage on the site's own disk (``federation.keep_optimizer_state``).

Without it every round starts each site's optimizer from zero moments, so a stage of R rounds x E
local epochs is R restarts where centralized training runs R·E epochs with one optimizer. The state
(safetensors + JSON, written atomically) lives in ``<state-dir>/optimizer/<adapter>.*``, belongs to
one stage of one run configuration and never leaves the site.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from .._io import atomic_write_bytes, atomic_write_json, read_json_file, storage_errors
from ..training.checkpoint import optimizer_from_safetensors, optimizer_to_safetensors

FOLDER = "optimizer"


def _paths(state_dir: Path, adapter: str) -> tuple[Path, Path]:
    folder = state_dir / FOLDER
    return folder / f"{adapter}.safetensors", folder / f"{adapter}.json"


def save_site_optimizer(state_dir: str | Path, adapter: str, optimizer: torch.optim.Optimizer, config: str, stage: int, round_index: int) -> None:
    """Keep ``optimizer``'s state for ``adapter`` after round ``round_index`` of stage ``stage`` (run config fingerprint ``config``)."""
    tensors, meta = optimizer_to_safetensors(optimizer)
    weights, info = _paths(Path(state_dir), adapter)
    with storage_errors(f"cannot keep the optimizer state of adapter {adapter!r} in {weights.parent}"):
        weights.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(weights, save_tensors(tensors))
        atomic_write_json(info, {"config": config, "stage": stage, "round": round_index, "optimizer": meta})


def restore_site_optimizer(state_dir: str | Path, adapter: str, optimizer: torch.optim.Optimizer, config: str, stage: int, round_index: int) -> bool:
    """Load the state kept for ``adapter`` after an earlier round of this stage of this run config into ``optimizer``.

    False (a fresh start) when there is none: the stage's first round, another stage or run config, or
    state from this round or a later one (a rerun, or a round the server is repeating after a restart).
    """
    weights, info = _paths(Path(state_dir), adapter)
    if not (weights.is_file() and info.is_file()):
        return False
    meta = read_json_file(info)
    saved_round = meta.get("round")
    if meta.get("config") != config or meta.get("stage") != stage or not isinstance(saved_round, int) or saved_round >= round_index:
        return False
    state = optimizer_from_safetensors(load_tensors(weights.read_bytes()), meta["optimizer"])
    if len(state["param_groups"]) != len(optimizer.param_groups) or any(
        len(a["params"]) != len(b["params"]) for a, b in zip(state["param_groups"], optimizer.param_groups)
    ):
        return False
    optimizer.load_state_dict(state)
    return True
