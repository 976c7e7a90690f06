"""``manifest.json``: what a medadapt save holds, in which order, for which base, with which hashes."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from .._io import loads_json, sha256_file
from ..errors import StageFileError
from .schema import validate_manifest

MANIFEST_NAME = "manifest.json"
FORMAT = "medadapt.stages"
FORMAT_VERSION = 1
ALLOWED_SUFFIXES = (".json", ".safetensors")
# tokenizer vocabularies and chat templates of a saved base (plain text / sentencepiece protobuf / Jinja text: data, never code)
BASE_EXTRA_SUFFIXES = (".txt", ".model", ".jinja")




def safe_relative(root: Path, relative: str, what: str) -> Path:
    """Resolve ``relative`` under ``root``; refuse absolute paths, ``..`` and anything escaping root."""
    pure = PurePosixPath(relative)
    if not relative or pure.is_absolute() or ".." in pure.parts or "\\" in relative or ":" in relative:
        raise StageFileError(f"{what}: path {relative!r} in the manifest is not a plain relative path inside the save.")
    full = (root / pure).resolve()
    if not full.is_relative_to(root.resolve()):
        raise StageFileError(f"{what}: path {relative!r} escapes the save folder {root}.")
    return full


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Read and validate ``folder/manifest.json``; raises :class:`StageFileError` naming what is wrong."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise StageFileError(
            f"{path} not found: {folder} is not a complete medadapt save (an interrupted save leaves no manifest)."
        )
    try:
        manifest = loads_json(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StageFileError(f"{path} is not valid JSON: {exc}") from exc
    validate_manifest(manifest, str(path), FORMAT, FORMAT_VERSION)
    root = Path(folder)
    base = manifest["base"] if isinstance(manifest["base"], dict) else {}
    if base.get("saved_in"):  # a base saved in the folder must stay inside it too
        safe_relative(root, base["saved_in"], "base model")
    for name, entry in manifest["adapters"].items():
        safe_relative(root, entry.get("path", ""), f"adapter {name!r}")
        for filename in entry.get("files", {}):
            check_allowed_file(filename, f"adapter {name!r}")
    return manifest


def manifest_sha256(folder: str | Path) -> str:
    """sha256 of ``folder/manifest.json``: pass it as ``manifest_sha256=`` to ``from_pretrained`` /
    ``load_adapter`` to load exactly that manifest (label order, prompts and every file hash)."""
    return sha256_file(Path(folder) / MANIFEST_NAME)


def check_manifest_sha256(folder: str | Path, expected: str | None) -> None:
    """Refuse a manifest whose sha256 differs from ``expected`` (when one is given)."""
    if expected is None:
        return
    actual = manifest_sha256(folder)
    if actual != str(expected).lower():
        raise StageFileError(
            f"{Path(folder) / MANIFEST_NAME} has sha256 {actual[:12]}..., not the expected {str(expected)[:12]}...: "
            "the manifest (labels, prompts, file hashes) changed since that hash was recorded. Not loading it."
        )


def check_allowed_file(filename: str, what: str, base: bool = False) -> None:
    """Only safetensors and JSON are ever loaded (plus tokenizer vocabularies when ``base``, a
    saved base model); anything else (a pickle) is refused."""
    if "/" in filename or "\\" in filename or filename in ("", ".", ".."):
        raise StageFileError(f"{what}: file name {filename!r} must be a plain name.")
    allowed = ALLOWED_SUFFIXES + (BASE_EXTRA_SUFFIXES if base else ())
    if not filename.endswith(allowed):
        raise StageFileError(
            f"{what}: file {filename!r} is not safetensors or JSON; medadapt never loads pickled files."
        )


def hash_folder(folder: Path, names: tuple[str, ...] | list[str]) -> dict[str, str]:
    """sha256 of the named files in ``folder``."""
    return {name: sha256_file(folder / name) for name in names}


def verify_files(root: Path, relative: str, files: dict[str, str], what: str, base: bool = False) -> Path:
    """Check every listed file exists under ``root/relative`` with the recorded sha256."""
    folder = safe_relative(root, relative, what)
    for name, expected in files.items():
        check_allowed_file(name, what, base=base)
        path = folder / name
        if not path.is_file():
            raise StageFileError(f"{what}: file {relative}/{name} is missing from {root}.")
        actual = sha256_file(path)
        if actual != expected:
            raise StageFileError(
                f"{what}: sha256 mismatch for {relative}/{name} (manifest {expected[:12]}..., file {actual[:12]}...): "
                "the file was modified or corrupted."
            )
    return folder
