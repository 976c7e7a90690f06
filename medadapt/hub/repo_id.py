"""Checking a Hub repo id before any Hub call, so a typo gets a clear error instead of huggingface_hub's raw one."""

from __future__ import annotations

from typing import Any

from ..errors import HubError


def check_repo_id(repo_id: Any) -> str:
    """``repo_id`` if huggingface_hub accepts it as a repo id (``name`` or ``namespace/name``), else :class:`HubError`."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(repo_id, str):
        raise HubError(f"a Hub repo id must be a string like 'your-name/medadapt-stages', got {type(repo_id).__name__}.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise HubError(
            f"{repo_id!r} is not a valid Hub repo id ({exc}). Use 'your-name/repo-name' with letters, digits, "
            "'-', '_' and '.' only."
        ) from exc
    return repo_id
