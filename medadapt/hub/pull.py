"""Download a published medadapt save (or a plain base model) from the Hugging Face Hub, safely.

:func:`download_save` resolves the requested revision to a commit sha, fetches ``manifest.json`` at that commit,
validates it (relative paths only, safetensors/JSON only) and then downloads exactly the files the manifest lists
for the stages needed, pinned to the same commit. sha256 checks happen when the stages are loaded
(:func:`medadapt.saves.manifest.verify_files`). With ``HF_HUB_OFFLINE=1`` (or ``local_files_only=True``) everything is
resolved from the local cache and a missing file raises :class:`~medadapt.errors.StageFileError` naming the repo
and the file. Pickled files are never downloaded, and a repo that only offers pickles is refused.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

from ..errors import StageFileError
from ..saves.manifest import MANIFEST_NAME, check_allowed_file, read_manifest, safe_relative

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".dill")
# what a plain base model needs: config, tokenizer and image processor files, safetensors weights
BASE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


def is_pickle(path: str) -> bool:
    """True for file names that usually hold pickled Python objects (which medadapt never loads)."""
    return path.lower().endswith(PICKLE_SUFFIXES)


def offline_mode(local_files_only: bool | None = None) -> bool:
    """``local_files_only``, or HF_HUB_OFFLINE (huggingface_hub's constant, or the variable set after import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(local_files_only) or bool(constants.HF_HUB_OFFLINE) or env


def _where(repo_id: str, revision: str) -> str:
    return f"Hub repo {repo_id!r} at revision {revision!r}"


def _snapshot(repo_id: str, revision: str, patterns: list[str], offline: bool, token: Any, cache_dir: Any) -> Path:
    """``snapshot_download`` restricted to ``patterns``; client errors become clear StageFileErrors."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HFValidationError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, token=token,
                                      cache_dir=cache_dir, local_files_only=offline))
    except HFValidationError as exc:
        raise StageFileError(f"{repo_id!r} is neither a local folder nor a valid Hub repo id ({exc}).") from exc
    except RepositoryNotFoundError as exc:
        raise StageFileError(
            f"{repo_id!r} is not a local folder, and Hub repo {repo_id!r} was not found (or it is private or gated and "
            "no valid token was found: log in with `hf auth login`, set HF_TOKEN or pass token=)."
        ) from exc
    except RevisionNotFoundError as exc:
        raise StageFileError(f"Hub repo {repo_id!r} has no revision {revision!r} (a branch, tag or commit sha).") from exc
    except (IncompleteSnapshotError, LocalEntryNotFoundError) as exc:
        folder = Path(getattr(exc, "snapshot_path", None) or "/nonexistent")
        missing = [p for p in patterns if not any(c in p for c in "*?[") and not (folder / p).is_file()]
        wanted = ", ".join(repr(p) for p in (missing or patterns))
        raise StageFileError(
            f"{_where(repo_id, revision)}: file(s) {wanted} not available: not in the local Hugging Face cache "
            f"and the Hub cannot be reached{' (offline mode: HF_HUB_OFFLINE=1 or local_files_only=True)' if offline else ''}. "
            "Download them once with network access."
        ) from exc


def _repo_files(repo_id: str, sha: str, folder: Path, cache_dir: Any) -> list[str]:
    """Files of the repo at commit ``sha``: the cached tree listing, else what the snapshot folder holds."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        return [f.path for f in get_cached_repo_tree(repo_id, revision=sha, cache_dir=cache_dir)]
    except (CachedRepoTreeNotFoundError, OSError, ValueError):
        return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]


def _check_present(repo_id: str, sha: str, folder: Path, needed: Sequence[str], offline: bool) -> None:
    for relative in needed:
        if not (folder / relative).is_file():
            mode = " in the local cache (offline mode: HF_HUB_OFFLINE=1 or local_files_only=True)" if offline else ""
            raise StageFileError(f"{_where(repo_id, sha)}: file {relative!r} is missing{mode}.")


def needed_files(manifest: dict[str, Any], stages: Sequence[str] | None, include_base: bool, root: Path) -> list[str]:
    """Repo paths of the manifest, the stages asked for (all by default) and, if wanted, ``base/``."""
    needed = [MANIFEST_NAME]
    adapters = manifest["adapters"]
    for name in [s for s in (manifest["stage_order"] if stages is None else stages) if s in adapters]:
        entry = adapters[name]
        safe_relative(root, entry["path"], f"adapter {name!r}")
        needed += [str(PurePosixPath(entry["path"]) / f) for f in entry["files"]]
    base = manifest["base"]
    if include_base and base.get("saved_in"):
        safe_relative(root, base["saved_in"], "base model")
        for filename in base.get("files", {}):
            if "/" in filename or "\\" in filename or is_pickle(filename):
                check_allowed_file(filename, "base model", base=True)  # raises: not a plain name / a pickle
            needed.append(str(PurePosixPath(base["saved_in"]) / filename))
    return needed


def _refuse_pickles(repo_id: str, sha: str, files: list[str], what: str) -> None:
    pickles = [f for f in files if is_pickle(f)]
    raise StageFileError(
        f"{_where(repo_id, sha)} {what}: it only offers pickled files ({', '.join(pickles[:5])}). medadapt loads "
        "safetensors and JSON only and never unpickles downloaded files; convert the weights to safetensors."
    )


def download_save(
    repo_id: str,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
    stages: Sequence[str] | None = None,
    include_base: bool = True,
    trust_remote_code: bool = False,
    **ignored: Any,
) -> tuple[Path, dict[str, Any]]:
    """Download what loading ``repo_id`` needs; returns the snapshot folder and the provenance.

    ``stages`` limits the adapters fetched (default: all); ``include_base=False`` skips ``base/`` (the
    caller brings its own base). Provenance: ``{"repo", "revision" (commit sha), "requested_revision"}``.
    A repo without ``manifest.json`` but with ``config.json`` is a plain base model (its ``*.py`` files are
    only fetched with ``trust_remote_code=True``).
    """
    offline = offline_mode(local_files_only)
    requested = revision or "main"
    folder = _snapshot(repo_id, requested, [MANIFEST_NAME, "config.json"], offline, token, cache_dir)
    sha = folder.name
    files = _repo_files(repo_id, sha, folder, cache_dir)
    provenance = {"repo": repo_id, "revision": sha, "requested_revision": requested}
    if (folder / MANIFEST_NAME).is_file():
        manifest = read_manifest(folder)  # refuses non-relative paths and non-safetensors/JSON files
        needed = needed_files(manifest, stages, include_base, folder)
        absent = [f for f in needed if f not in files and not (folder / f).is_file()]
        if absent and not offline:
            raise StageFileError(f"{_where(repo_id, sha)}: manifest.json lists {absent[0]!r} but the repo has no such file.")
        folder = _snapshot(repo_id, sha, needed, offline, token, cache_dir)
        _check_present(repo_id, sha, folder, needed, offline)
    elif "config.json" in files:
        if not any(f.endswith(".safetensors") for f in files) and any(is_pickle(f) for f in files):
            _refuse_pickles(repo_id, sha, files, "has no safetensors weights")
        patterns = BASE_PATTERNS + (["*.py"] if trust_remote_code else [])
        folder = _snapshot(repo_id, sha, patterns, offline, token, cache_dir)
    elif any(is_pickle(f) for f in files):
        _refuse_pickles(repo_id, sha, files, "holds no manifest.json and no safetensors model")
    else:
        where = "in the local cache" if offline else "in the repo"
        raise StageFileError(
            f"{_where(repo_id, sha)}: file 'manifest.json' not found {where}; it is not a medadapt save "
            f"(nor a base model with config.json). Files: {files[:10]}."
        )
    logger.info("resolved %s@%s to commit %s", repo_id, requested, sha)
    return folder, provenance


def locate_save(path: str | os.PathLike, revision: str | None = None, **kwargs: Any) -> tuple[Path, dict[str, Any]]:
    """A local folder for ``path``; a Hub repo id is downloaded with :func:`download_save`.

    Returns the folder and a provenance dict (``{"path": ...}`` or ``{"repo": ..., "revision": ...}``).
    """
    if os.path.isdir(path):
        return Path(path), {"path": str(Path(path).resolve())}
    return download_save(str(path), revision=revision, **kwargs)
