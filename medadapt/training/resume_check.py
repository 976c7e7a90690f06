"""What ``--resume`` may resume from: a checkpoint that is complete and verified, or nothing at all.

Each checkpoint's ``state.json`` records the sha256 of the checkpoint's other files (optimizer state,
RNG state, the adapters' manifest, whose own hashes cover the adapter files). Before a run resumes,
:func:`resume_checkpoint` checks all of them; a missing, truncated or edited file stops the resume
with a :class:`~medadapt.errors.CheckpointError` that says what is missing and what to do. A run
that has written a checkpoint once (``run.json`` says so) never silently starts over because its
checkpoint disappeared: starting over is ``--overwrite``, an explicit choice.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .._io import atomic_write_json, loads_json, sha256_file
from ..errors import CheckpointError, StageFileError
from .checkpoint import FILES_KEY, MANIFEST_FILE as MANIFEST, MODEL_DIR, OPTIM_NAME, RNG_NAME, STATE_DIGEST_KEY, STATE_NAME, latest_checkpoint, state_digest

logger = logging.getLogger(__name__)

CHECKPOINTED_KEY = "checkpointed"  # in run.json: this run has written a checkpoint at least once


def _advice(out: Path) -> str:
    return (
        f"Restore the checkpoint from a backup, or start the run over from the beginning with --overwrite "
        f"(which replaces what is in {out})."
    )


def verify_checkpoint(folder: Path, out: Path) -> dict[str, Any]:
    """Check that ``folder`` is a complete checkpoint whose files match their recorded hashes; returns its state."""
    from ..saves.manifest import read_manifest, verify_files

    path = folder / STATE_NAME
    try:
        state = loads_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"--resume: the checkpoint state {path} is unreadable ({type(exc).__name__}: {str(exc)[:200]}). {_advice(out)}") from exc
    if not isinstance(state, dict) or not isinstance(state.get("loop"), dict):
        raise CheckpointError(f"--resume: {path} is not a medadapt checkpoint state. {_advice(out)}")
    try:
        digest_ok = state.get(STATE_DIGEST_KEY) == state_digest(state)
    except (TypeError, ValueError):  # non-finite numbers or values JSON cannot hold
        digest_ok = False
    if not digest_ok:
        raise CheckpointError(
            f"--resume: {path} does not match the sha256 recorded in it when the checkpoint was written (its loop "
            f"position, learning rate or another value was edited, or it predates the digest). {_advice(out)}"
        )
    recorded = state.get(FILES_KEY) or {}
    needed = {MANIFEST: "the adapters' manifest", RNG_NAME: "the random-number-generator state"}
    if state.get("optimizer"):
        loop = state["loop"]
        needed[OPTIM_NAME] = f"the optimizer state (the run stopped inside phase {loop.get('phase')} at step {loop.get('step')})"
    for name, what in needed.items():
        if not (folder / name).is_file():
            raise CheckpointError(
                f"--resume: the checkpoint in {folder} is incomplete: {name} ({what}) is missing, so the run would not "
                f"continue the way an uninterrupted run does. {_advice(out)}"
            )
    for name, expected in recorded.items():
        if not (folder / name).is_file():
            raise CheckpointError(f"--resume: the checkpoint in {folder} is incomplete: {name} is missing. {_advice(out)}")
        if sha256_file(folder / name) != expected:
            raise CheckpointError(
                f"--resume: {folder / name} does not match the sha256 recorded when the checkpoint was written (it was "
                f"truncated or modified). {_advice(out)}"
            )
    if not recorded:  # a checkpoint from before hashes were recorded: at least every file must parse
        _check_readable(folder, [n for n in (OPTIM_NAME, RNG_NAME) if (folder / n).is_file()], out)
    try:
        manifest = read_manifest(folder / MODEL_DIR)
        for name, entry in manifest["adapters"].items():
            verify_files(folder / MODEL_DIR, entry["path"], entry["files"], f"checkpoint adapter {name!r}")
    except StageFileError as exc:
        raise CheckpointError(f"--resume: the checkpoint's adapters do not verify: {exc} {_advice(out)}") from exc
    return state


def _check_readable(folder: Path, names: list[str], out: Path) -> None:
    from safetensors import SafetensorError, safe_open

    for name in names:
        try:
            with safe_open(str(folder / name), framework="pt") as handle:
                for key in handle.keys():
                    handle.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"--resume: {folder / name} is unreadable ({exc}). {_advice(out)}") from exc


def resume_checkpoint(out: Path, checkpoint_dir: Path, run_file: Path) -> Path | None:
    """The verified checkpoint to resume from, or None for a run killed before its first checkpoint."""
    folder = latest_checkpoint(checkpoint_dir)
    if folder is not None:
        verify_checkpoint(folder, out)
        return folder
    try:
        checkpointed = bool(json.loads(run_file.read_text(encoding="utf-8")).get(CHECKPOINTED_KEY))
    except (OSError, ValueError, AttributeError):
        checkpointed = False
    if checkpointed or checkpoint_dir.exists():
        missing = f"{checkpoint_dir / STATE_NAME}" if checkpoint_dir.exists() else f"{checkpoint_dir}/"
        raise CheckpointError(
            f"--resume: this run wrote checkpoints, but {missing} is missing, so there is nothing verified to resume "
            f"from. {_advice(out)}"
        )
    logger.warning("--resume: %s was stopped before its first checkpoint; starting it from the beginning.", out)
    return None


def mark_checkpointed(run_file: Path) -> None:
    """Record in ``run.json`` that the run has a checkpoint (once), so its loss is never taken for a fresh start."""
    try:
        data = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(data, dict) and not data.get(CHECKPOINTED_KEY):
        data[CHECKPOINTED_KEY] = True
        atomic_write_json(run_file, data)


LOOP_KEYS = {"phase": int, "step": int, "rows": dict, "metrics": list, "buffer": (dict, type(None)), "elapsed": (int, float)}


def check_loop_state(state: dict[str, Any], phase_steps: list[int], n_stages: int, lr: float, weight_decay: float, path: Path) -> None:
    """Check a checkpoint's loop position and optimizer settings against the run's config and schedule.

    ``phase_steps`` is the step count of every phase of the plan. A position outside the schedule, a loop key
    that is missing, unknown or mistyped, or a learning rate / weight decay other than the config's is refused
    with a :class:`~medadapt.errors.CheckpointError` (a digest only shows a file was edited by someone who did
    not also recompute it).
    """
    import math

    loop = state.get("loop")
    where = f"--resume: the checkpoint state {path}"
    if not isinstance(loop, dict):
        raise CheckpointError(f"{where} holds no loop position.")
    unknown, missing = sorted(set(loop) - set(LOOP_KEYS)), sorted(set(LOOP_KEYS) - set(loop))
    if unknown or missing:
        raise CheckpointError(f"{where} has unknown loop key(s) {unknown} / lacks {missing}; valid keys: {sorted(LOOP_KEYS)}. {_advice(path.parent.parent)}")
    for key, kind in LOOP_KEYS.items():
        value = loop[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise CheckpointError(f"{where}: loop.{key} has the wrong type ({type(value).__name__}). {_advice(path.parent.parent)}")
    phase, step = loop["phase"], loop["step"]
    if not 0 <= phase <= len(phase_steps):
        raise CheckpointError(f"{where}: loop.phase={phase} is outside this run's plan (0..{len(phase_steps)}). {_advice(path.parent.parent)}")
    limit = phase_steps[phase] if phase < len(phase_steps) else 1
    if not 0 <= step < limit:
        raise CheckpointError(
            f"{where}: loop.step={step} is outside phase {phase}'s schedule (0..{limit - 1}); resuming would cut or "
            f"extend the phase. {_advice(path.parent.parent)}"
        )
    evaluated = [len(rows) for rows in loop["rows"].values()]
    if len(loop["metrics"]) > n_stages or any(n != len(loop["metrics"]) for n in evaluated):
        raise CheckpointError(f"{where}: its evaluated stages do not match this run's plan of {n_stages} stage(s). {_advice(path.parent.parent)}")
    if not (math.isfinite(loop["elapsed"]) and loop["elapsed"] >= 0):
        raise CheckpointError(f"{where}: loop.elapsed={loop['elapsed']} is not a time. {_advice(path.parent.parent)}")
    for group in (state.get("optimizer") or {}).get("param_groups", []):
        if not isinstance(group, dict) or group.get("lr") != lr or group.get("weight_decay") != weight_decay:
            got = (group.get("lr"), group.get("weight_decay")) if isinstance(group, dict) else group
            raise CheckpointError(
                f"{where}: the optimizer's (lr, weight_decay) {got} differ from the config's ({lr}, {weight_decay}). "
                f"{_advice(path.parent.parent)}"
            )
