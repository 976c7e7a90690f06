"""A fingerprint of each domain's training data, recorded in the run, so ``--resume`` never continues a run
on data other than the data it started on.

Per domain: the source (a data file's size and mtime, or a folder's file count, total size and newest mtime)
and per split the number of samples and a sha256 of its content: the label array, the image array's bytes
(in-memory data) or the file list with each file's size (file-based data), and the questions and answers of
VQA data. A resume whose content hashes or source sizes differ is refused unless ``--resume-anyway``; a
changed mtime alone (a copy to another machine) is not a difference.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import CheckpointError


def _source(path: str | None) -> dict[str, Any]:
    if not path or path.startswith("medadapt:"):
        return {}
    p = Path(path)
    if p.is_file():
        stat = p.stat()
        return {"size": stat.st_size, "mtime": stat.st_mtime}
    if p.is_dir():
        count, size, newest = 0, 0, 0.0
        for root, _, files in os.walk(p):
            for name in files:
                try:
                    stat = os.stat(os.path.join(root, name))
                except OSError:
                    continue
                count, size, newest = count + 1, size + stat.st_size, max(newest, stat.st_mtime)
        return {"files": count, "size": size, "mtime": newest}
    return {}


def _split_hash(dataset: Any) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(dataset.labels, dtype=np.int64).tobytes())
    images = getattr(dataset, "images", None)
    if isinstance(images, np.ndarray):
        digest.update(str(images.shape).encode())
        digest.update(np.ascontiguousarray(images).tobytes())
    elif isinstance(images, list):
        for path in images:
            try:
                size = os.stat(path).st_size
            except OSError:
                size = -1
            digest.update(f"{path}\0{size}\n".encode())
    elif images is not None:
        digest.update(f"{type(images).__name__}:{len(images)}:{getattr(getattr(images, 'ds', None), '_fingerprint', '')}".encode())
        for attr in ("paths",):
            for path in getattr(getattr(images, "files", None), attr, []) or []:
                digest.update(f"{path}\n".encode())
    for attr in ("questions", "answers"):
        values = getattr(dataset, attr, None)
        if values is not None:
            digest.update(attr.encode())
            for value in values:
                digest.update(f"{value}\0".encode())
    return digest.hexdigest()


def data_fingerprint(domains: Mapping[str, Any], sources: Mapping[str, str | None]) -> dict[str, Any]:
    """``{domain: {"source": ..., "splits": {split: {"n", "sha256"}}}}`` for loaded ``domains`` (name -> DomainData)."""
    return {
        name: {
            "source": _source(sources.get(name)),
            "splits": {split: {"n": len(ds), "sha256": _split_hash(ds)} for split, ds in sorted(domain.splits.items())},
        }
        for name, domain in domains.items()
    }


def data_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between a recorded and the current fingerprint (mtimes ignored)."""
    out = []
    for name in sorted(set(recorded) | set(current)):
        old, new = recorded.get(name), current.get(name)
        if old is None or new is None:
            out.append(f"domain {name!r} {'is new' if old is None else 'is gone'}")
            continue
        for split in sorted(set(old.get("splits", {})) | set(new.get("splits", {}))):
            a, b = old.get("splits", {}).get(split), new.get("splits", {}).get(split)
            if a != b:
                what = "its content changed" if a and b and a.get("n") == b.get("n") else f"{(a or {}).get('n')} -> {(b or {}).get('n')} samples"
                out.append(f"domain {name!r} split {split!r}: {what}")
        a, b = old.get("source", {}), new.get("source", {})
        if a.get("size") != b.get("size") or a.get("files") != b.get("files"):
            out.append(f"domain {name!r} data source: size {a.get('size')} -> {b.get('size')} bytes")
    return out


def check_same_data(recorded: Mapping[str, Any] | None, current: Mapping[str, Any], out: Path, anyway: bool) -> list[str]:
    """Refuse (:class:`~medadapt.errors.CheckpointError`) a resume on changed data unless ``anyway``; returns the differences."""
    if recorded is None:
        return []
    differences = data_differences(recorded, current)
    if differences and not anyway:
        raise CheckpointError(
            f"--resume: the training data changed since the run in {out} started: {'; '.join(differences)}. Resuming "
            "would continue it on other data. Put the original data back, start over with --overwrite, or pass "
            "--resume-anyway to continue on the new data knowingly."
        )
    return differences
