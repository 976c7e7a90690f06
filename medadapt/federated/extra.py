"""The optional dependency: Flower (``pip install "medadapt[federated]"``)."""

from __future__ import annotations

import importlib.util

from ..errors import MissingExtraError

INSTALL_HINT = 'pip install "medadapt[federated]"'


def require_flwr() -> None:
    """Raise :class:`MissingExtraError` with the install command when Flower (``flwr``) is missing."""
    if importlib.util.find_spec("flwr") is None:
        raise MissingExtraError(f"federated training runs on Flower, which is not installed: {INSTALL_HINT}")
