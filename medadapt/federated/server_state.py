"""The server's progress, written after every completed round: a restarted server resumes from it.

``output_dir/federation/state.json`` names the round-stamped weights file it belongs to; the weights
are written first and the state replaces the old one atomically, so a crash at any point leaves the
last completed round intact and no round is counted twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes, atomic_write_json, read_json_file, sha256_file, storage_errors
from ..errors import CheckpointError, ConfigError

FOLDER = "federation"
STATE_FILE = "state.json"


@dataclass
class ServerState:
    """Stages finished, rounds finished in the current stage, per-round history and evaluation rows."""

    config: str
    stage: int = 0
    round: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    rows: dict[str, list[list[float | None]]] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0
    weights: str = ""
    weights_sha256: str = ""

    def completed_rounds(self) -> int:
        """Rounds completed over the whole run."""
        return len(self.history)


def save_state(out: Path, state: ServerState, tensors: dict[str, np.ndarray]) -> None:
    """Write the global tensors, then the state that names them (atomic), then drop older tensors."""
    from safetensors.numpy import save

    folder = out / FOLDER
    name = f"weights-{state.completed_rounds():05d}-{state.stage}.safetensors"
    with storage_errors(f"cannot write the federation state into {folder}"):
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / name, save({k: np.ascontiguousarray(v) for k, v in tensors.items()}))
        state.weights, state.weights_sha256 = name, sha256_file(folder / name)
        atomic_write_json(folder / STATE_FILE, asdict(state))
        for old in folder.glob("weights-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)


def load_state(out: Path, config_fingerprint: str) -> tuple[ServerState, dict[str, np.ndarray]] | None:
    """The last completed round's state and tensors, or None when the run has not started."""
    from safetensors.numpy import load_file

    path = out / FOLDER / STATE_FILE
    if not path.is_file():
        return None
    data = read_json_file(path)
    if data.get("config") != config_fingerprint:
        raise ConfigError(f"{out} holds a federated run of another configuration (fingerprint {data.get('config')} vs {config_fingerprint}); use a new output_dir.")
    state = ServerState(**data)
    weights = out / FOLDER / state.weights
    if not weights.is_file() or sha256_file(weights) != state.weights_sha256:
        raise CheckpointError(f"{weights} is missing or does not match {path}; the federation state cannot be resumed.")
    return state, load_file(str(weights))
