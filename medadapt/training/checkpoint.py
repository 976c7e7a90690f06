"""Checkpoints in safetensors + JSON only: adapters (a normal medadapt save), optimizer state,
torch RNG state and the loop position. Written to a temporary folder and swapped in atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .._io import atomic_directory, sha256_file
from ..errors import StageFileError
from ..hub.io import read_adapter, save_model
from ..hub.manifest import read_manifest, verify_files

STATE_NAME = "state.json"
OPTIM_NAME = "optimizer.safetensors"
RNG_NAME = "rng.safetensors"
MODEL_DIR = "model"
MANIFEST_FILE = f"{MODEL_DIR}/manifest.json"
FILES_KEY = "files"  # in state.json: sha256 of the other files, checked before a resume


def checkpoint_hashes(folder: str | Path) -> dict[str, str]:
    """sha256 of a checkpoint's optimizer, RNG and adapter-manifest files (those present)."""
    folder = Path(folder)
    return {name: sha256_file(folder / name) for name in (OPTIM_NAME, RNG_NAME, MANIFEST_FILE) if (folder / name).is_file()}


def _optimizer_to_safetensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_safetensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(folder: str | Path, model: Any, optimizer: torch.optim.Optimizer | None, state: dict[str, Any]) -> None:
    """Atomically replace ``folder`` with the model's adapters, optimizer and loop ``state``."""
    with atomic_directory(folder) as tmp:
        save_model(model.parts(), tmp / MODEL_DIR, save_base=False)  # the base is rebuilt on resume
        meta: dict[str, Any] = {}
        if optimizer is not None:
            tensors, meta = _optimizer_to_safetensors(optimizer)
            save_file(tensors or {"__empty__": torch.zeros(0)}, str(tmp / OPTIM_NAME))
        save_file({"torch": torch.get_rng_state()}, str(tmp / RNG_NAME))
        (tmp / STATE_NAME).write_text(json.dumps({**state, "optimizer": meta, FILES_KEY: checkpoint_hashes(tmp)}, indent=2, sort_keys=True))


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint to resume from: ``folder`` itself, or (when a kill landed in the instant between
    the two renames of an atomic swap) the previous checkpoint parked beside it; None if there is none."""
    folder = Path(folder)
    if (folder / STATE_NAME).is_file():
        return folder
    parked = sorted(folder.parent.glob(f".{folder.name}.old-*/d/{STATE_NAME}"), key=lambda p: p.stat().st_mtime)
    return parked[-1].parent if parked else None


def read_state(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / STATE_NAME
    if not path.is_file():
        raise StageFileError(f"no checkpoint at {folder} (missing {STATE_NAME}); nothing to resume.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StageFileError(f"checkpoint state {path} is corrupted: {exc}") from exc


def restore_adapters(folder: str | Path, model: Any) -> None:
    """Load every adapter of ``model`` by name from the checkpoint's model save (hashes verified)."""
    root = Path(folder)
    manifest = read_manifest(root)
    for name in model.adapter_names():
        entry = manifest["adapters"].get(name)
        if entry is None:
            raise StageFileError(f"checkpoint {root} holds no adapter {name!r}; it has {sorted(manifest['adapters'])}.")
        what = f"checkpoint adapter {name!r}"
        _, _, weights = read_adapter(verify_files(root, entry["path"], entry["files"], what), entry["type"], what)
        model.load_adapter_weights(name, weights)


def restore_optimizer(folder: str | Path, optimizer: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    path = Path(folder) / OPTIM_NAME
    if not meta or not path.is_file():
        return
    tensors = {k: v for k, v in load_file(str(path)).items() if k != "__empty__"}
    optimizer.load_state_dict(_optimizer_from_safetensors(tensors, meta))


def restore_rng(folder: str | Path) -> None:
    path = Path(folder) / RNG_NAME
    if path.is_file():
        torch.set_rng_state(load_file(str(path))["torch"])
