"""Checkpoints in safetensors + JSON only: adapters (a normal medadapt save), optimizer state,
the random-number generators (torch CPU, every CUDA device, numpy's global and Python's ``random``),
the fp16 GradScaler and the loop position. Written to a temporary folder and swapped in atomically.

``state.json`` records the sha256 of the other files and (``STATE_DIGEST_KEY``) of its own content, so an
edited loop position or learning rate is caught before a resume.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .._io import atomic_directory, loads_json, sha256_file
from ..errors import StageFileError
from ..saves.io import read_adapter, save_model
from ..saves.manifest import read_manifest, verify_files

STATE_NAME = "state.json"
OPTIM_NAME = "optimizer.safetensors"
RNG_NAME = "rng.safetensors"
MODEL_DIR = "model"
MANIFEST_FILE = f"{MODEL_DIR}/manifest.json"
FILES_KEY = "files"  # in state.json: sha256 of the other files, checked before a resume
STATE_DIGEST_KEY = "state_sha256"  # in state.json: sha256 of the rest of state.json, checked before a resume


def state_digest(state: dict[str, Any]) -> str:
    """sha256 of a checkpoint state without its own digest (canonical, strict JSON)."""
    body = {k: v for k, v in state.items() if k != STATE_DIGEST_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False).encode()).hexdigest()


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every generator a training step may draw from: tensors (torch CPU, CUDA per device, numpy's key
    array) and the JSON rest (numpy's position, Python's ``random``)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = cuda_state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64))
    version, internal, gauss = random.getstate()
    meta = {"numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": version, "state": list(internal), "gauss": gauss}}
    return tensors, meta


def checkpoint_hashes(folder: str | Path) -> dict[str, str]:
    """sha256 of a checkpoint's optimizer, RNG and adapter-manifest files (those present)."""
    folder = Path(folder)
    return {name: sha256_file(folder / name) for name in (OPTIM_NAME, RNG_NAME, MANIFEST_FILE) if (folder / name).is_file()}


EMPTY_KEY = "__empty__"  # the placeholder tensor of an optimizer with no state yet


def optimizer_to_safetensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state as safetensors-ready tensors (``"<param id>.<key>"``; a zero-size placeholder
    when there are none, since a safetensors file needs one) and JSON-ready metadata."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors or {EMPTY_KEY: torch.zeros(0)}, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_safetensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """The ``state_dict`` that :func:`optimizer_to_safetensors` took apart."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key == EMPTY_KEY:
            continue
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
            tensors, meta = optimizer_to_safetensors(optimizer)
            save_file(tensors, str(tmp / OPTIM_NAME))
        rng_tensors, rng_meta = capture_rng()
        save_file(rng_tensors, str(tmp / RNG_NAME))
        full = {**state, "optimizer": meta, "rng": rng_meta, FILES_KEY: checkpoint_hashes(tmp)}
        full[STATE_DIGEST_KEY] = state_digest(full)
        (tmp / STATE_NAME).write_text(json.dumps(full, indent=2, sort_keys=True, allow_nan=False))


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
        return loads_json(path.read_text())
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
    optimizer.load_state_dict(optimizer_from_safetensors(load_file(str(path)), meta))


def restore_rng(folder: str | Path, meta: dict[str, Any] | None = None) -> None:
    """Put back the generators :func:`capture_rng` saved (``meta``: the ``rng`` entry of ``state.json``).

    CUDA states are restored when this process has CUDA devices (a checkpoint written on CPU leaves them alone)."""
    path = Path(folder) / RNG_NAME
    if not path.is_file():
        return
    tensors = load_file(str(path))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors)) if f"cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    meta = meta or {}
    if "numpy" in tensors and "numpy" in meta:
        n = meta["numpy"]
        np.random.set_state((n["kind"], tensors["numpy"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "python" in meta:
        p = meta["python"]
        random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
